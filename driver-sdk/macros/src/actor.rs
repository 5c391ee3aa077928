//! `#[miniray::actor]`: the struct half (the `Actor` impl, client and options types) and the
//! impl half (constructor and method registration, `remote`, client methods).
//!
//! Both halves name the generated types by the same rule (`__<Type>ActorClient`,
//! `__<Type>ActorOptions`), which is how the impl half finds what the struct half defined.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::{FnArg, ImplItem, ItemImpl, ItemStruct, ReturnType, Type};

use crate::ByValueArgs;

fn client_ident(ty: &syn::Ident) -> syn::Ident {
    format_ident!("__{}ActorClient", ty)
}

fn options_ident(ty: &syn::Ident) -> syn::Ident {
    format_ident!("__{}ActorOptions", ty)
}

/// Workers find classes and methods by name, so nothing generic can be remote.
fn reject_generics(generics: &syn::Generics, what: &str) -> syn::Result<()> {
    if generics.params.is_empty() {
        return Ok(());
    }
    Err(syn::Error::new_spanned(
        generics,
        format!("{what} cannot be generic: workers look them up by name"),
    ))
}

pub(crate) fn expand_struct(item: ItemStruct) -> syn::Result<TokenStream2> {
    reject_generics(&item.generics, "actors")?;
    let ident = &item.ident;
    let vis = &item.vis;
    let client = client_ident(ident);
    let options = options_ident(ident);
    let client_doc = format!(
        "Calls on an actor of class [`{ident}`]: `ActorHandle<{ident}>` dereferences to this."
    );
    let options_doc = format!("Options of one creation of a [`{ident}`] actor.");
    Ok(quote! {
        #item

        impl ::miniray::Actor for #ident {
            const NAME: &'static str =
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident));
            type Client = #client;
        }

        #[doc = #client_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone)]
        #vis struct #client(::miniray::__private::ActorCore);

        impl ::miniray::__private::ActorClient for #client {
            fn from_core(core: ::miniray::__private::ActorCore) -> Self {
                Self(core)
            }
            fn core(&self) -> &::miniray::__private::ActorCore {
                &self.0
            }
        }

        #[doc = #options_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Debug)]
        #vis struct #options(::miniray::ActorOptions);

        #[allow(dead_code)]
        impl #options {
            /// A cluster-wide name, for `miniray::get_actor`.
            pub fn name(self, name: impl Into<String>) -> Self { Self(self.0.name(name)) }
            /// CPUs the actor holds for its life (default 0).
            pub fn num_cpus(self, n: f64) -> Self { Self(self.0.num_cpus(n)) }
            /// Any other resource the actor holds for its life, such as `("GPU", 1.0)`.
            pub fn resource(self, name: impl Into<String>, amount: f64) -> Self {
                Self(self.0.resource(name, amount))
            }
            /// Re-creations when its worker dies; -1 without limit (default 0).
            pub fn max_restarts(self, n: i64) -> Self { Self(self.0.max_restarts(n)) }
            /// Re-sends of a call whose worker died while it ran (default 0).
            pub fn max_task_retries(self, n: u32) -> Self { Self(self.0.max_task_retries(n)) }
        }
    })
}

/// A method of the actor: how it is called and what it returns.
struct Method {
    vis: syn::Visibility,
    name: syn::Ident,
    args: ByValueArgs,
    ret: Type,
}

fn return_type(output: &ReturnType) -> Type {
    match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

pub(crate) fn expand_impl(item: ItemImpl) -> syn::Result<TokenStream2> {
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[actor] goes on the inherent impl block of the struct, not on a trait impl",
        ));
    }
    reject_generics(&item.generics, "actors")?;
    let ty = &item.self_ty;
    let ident = match &**ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.clone())
            .ok_or_else(|| syn::Error::new_spanned(ty, "expected the actor's type"))?,
        other => return Err(syn::Error::new_spanned(other, "expected the actor's type")),
    };
    let client = client_ident(&ident);
    let options = options_ident(&ident);

    let mut constructor: Option<ByValueArgs> = None;
    let mut methods = Vec::new();
    for impl_item in &item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let sig = &f.sig;
        let receiver = sig.inputs.iter().find_map(|a| match a {
            FnArg::Receiver(r) => Some(r),
            FnArg::Typed(_) => None,
        });
        let Some(receiver) = receiver else {
            if sig.ident == "new" {
                constructor = Some(ByValueArgs::parse(
                    sig.inputs.iter(),
                    "an actor's constructor",
                )?);
            }
            continue;
        };
        if receiver.reference.is_none() || receiver.colon_token.is_some() {
            return Err(syn::Error::new_spanned(
                receiver,
                "actor methods take `&self` or `&mut self`",
            ));
        }
        if let Some(asyncness) = &sig.asyncness {
            return Err(syn::Error::new_spanned(
                asyncness,
                "actor methods must be synchronous: they run on the actor's task thread",
            ));
        }
        reject_generics(&sig.generics, "actor methods")?;
        methods.push(Method {
            vis: f.vis.clone(),
            name: sig.ident.clone(),
            args: ByValueArgs::parse(sig.inputs.iter().skip(1), "actor methods")?,
            ret: return_type(&sig.output),
        });
    }
    let Some(ctor) = constructor else {
        return Err(syn::Error::new_spanned(
            ty,
            "an actor's impl block needs a constructor `fn new(..) -> Self`",
        ));
    };
    let (ctor_names, ctor_params, ctor_collect, ctor_decode) =
        (&ctor.names, ctor.params(), ctor.collect(), ctor.decode());

    let client_methods = methods.iter().map(|m| {
        let Method {
            vis,
            name,
            args,
            ret,
        } = m;
        let method_name = name.to_string();
        let doc = format!("Calls [`{ident}::{name}`] on the actor; returns at once.");
        let (params, collect) = (args.params(), args.collect());
        quote! {
            #[doc = #doc]
            #vis fn #name(&self, #params) -> ::miniray::Result<::miniray::ObjectRef<#ret>> {
                #collect
                ::miniray::__private::ActorClient::core(self).call::<#ret>(#method_name, args)
            }
        }
    });

    let invokers = methods.iter().map(|m| {
        let Method {
            name, args, ret, ..
        } = m;
        let method_name = name.to_string();
        let invoke = format_ident!("__invoke_{}", name);
        let (arg_names, decode) = (&args.names, args.decode());
        quote! {
            fn #invoke(
                this: &mut dyn ::core::any::Any,
                args: &[&[u8]],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::miniray::__private::InvokeError> {
                let this = this
                    .downcast_mut::<#ty>()
                    .ok_or(::miniray::__private::InvokeError::WrongActor)?;
                #decode
                let out: #ret = <#ty>::#name(this, #(#arg_names),*);
                ::miniray::__private::encode_return(&out)
            }
            ::miniray::__private::inventory::submit! {
                ::miniray::__private::ActorMethod {
                    class: <#ty as ::miniray::Actor>::NAME,
                    method: #method_name,
                    invoke: #invoke,
                }
            }
        }
    });

    Ok(quote! {
        #item

        #[allow(dead_code)]
        impl #ty {
            /// Creates the actor somewhere in the cluster with default options; returns its
            /// handle at once (the constructor runs there).
            pub fn remote(#ctor_params) -> ::miniray::Result<::miniray::ActorHandle<#ty>> {
                Self::options().remote(#(#ctor_names),*)
            }

            /// Options for one creation: `options().name("x").max_restarts(2).remote(..)`.
            pub fn options() -> #options {
                #options(::miniray::ActorOptions::new())
            }
        }

        #[allow(dead_code)]
        impl #options {
            /// Creates the actor with these options; returns its handle at once.
            pub fn remote(self, #ctor_params) -> ::miniray::Result<::miniray::ActorHandle<#ty>> {
                #ctor_collect
                ::miniray::__private::ActorCore::create::<#ty>(self.0, args)
            }

            /// `remote` for async code (the GCS registers the actor before it returns).
            pub async fn remote_async(self, #ctor_params)
                -> ::miniray::Result<::miniray::ActorHandle<#ty>>
            {
                #ctor_collect
                ::miniray::__private::ActorCore::create_async::<#ty>(self.0, args).await
            }
        }

        #[allow(dead_code)]
        impl #client {
            #(#client_methods)*
        }

        const _: () = {
            fn __construct(
                args: &[&[u8]],
            ) -> ::core::result::Result<::miniray::__private::ActorInstance, ::miniray::__private::InvokeError> {
                #ctor_decode
                let instance: #ty = <#ty>::new(#(#ctor_names),*);
                ::core::result::Result::Ok(::std::boxed::Box::new(instance))
            }
            ::miniray::__private::inventory::submit! {
                ::miniray::__private::ActorClass {
                    name: <#ty as ::miniray::Actor>::NAME,
                    construct: __construct,
                }
            }
            #(#invokers)*
        };
    })
}

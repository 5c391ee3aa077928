//! Procedural macros of miniray: `#[miniray::remote]` and `#[miniray::actor]`.
//!
//! `#[remote]` keeps the function callable as a plain function and adds, beside it, a module
//! of the same name with `remote(args..)`, `options()` and the function's registration in the
//! executable-wide registry (through `inventory`), so that a worker started from the same
//! executable can look the function up by name.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, FnArg, ItemFn, MetaNameValue, Pat, ReturnType, Token, Type, parse_macro_input};

mod actor;

/// Turns a function into a remote function. See the crate docs of `miniray`.
///
/// Options: `num_cpus = N` (default 1), `max_retries = N` (default 3), `resources = ...`
/// is given per call through `options().resource(name, amount)`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    match expand_remote(attr.into(), func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Turns a struct and its `impl` block into an actor class. See the crate docs of `miniray`.
///
/// On the struct: implements `miniray::Actor` and defines the client and options types.
/// On the `impl` block: requires `fn new(..) -> Self` (the constructor), adds
/// `Type::remote(..)` and `Type::options()`, and makes every `&self`/`&mut self` method a
/// call on `ActorHandle<Type>`.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr2: TokenStream2 = attr.into();
        return syn::Error::new_spanned(
            attr2,
            "#[actor] takes no options; use `Type::options()` per creation",
        )
        .to_compile_error()
        .into();
    }
    let item2: TokenStream2 = item.into();
    let result = match syn::parse2::<syn::Item>(item2) {
        Ok(syn::Item::Struct(s)) => actor::expand_struct(s),
        Ok(syn::Item::Impl(i)) => actor::expand_impl(i),
        Ok(other) => Err(syn::Error::new_spanned(
            other,
            "#[actor] goes on a struct and on its impl block",
        )),
        Err(e) => Err(e),
    };
    match result {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The arguments of a remote function, method or constructor, which are passed by value
/// (they are serialized), and the code every generated entry point builds from them.
pub(crate) struct ByValueArgs {
    pub names: Vec<syn::Ident>,
    pub types: Vec<Type>,
}

impl ByValueArgs {
    pub(crate) fn parse<'a>(
        inputs: impl Iterator<Item = &'a FnArg>,
        what: &str,
    ) -> syn::Result<Self> {
        let mut names = Vec::new();
        let mut types = Vec::new();
        for (i, input) in inputs.enumerate() {
            match input {
                FnArg::Receiver(r) => {
                    return Err(syn::Error::new_spanned(
                        r,
                        format!("{what} cannot take self"),
                    ));
                }
                FnArg::Typed(pt) => {
                    if let Type::Reference(r) = &*pt.ty {
                        return Err(syn::Error::new_spanned(
                            r,
                            format!("{what} arguments are passed by value (they are serialized)"),
                        ));
                    }
                    names.push(match &*pt.pat {
                        Pat::Ident(id) => format_ident!("{}", id.ident),
                        _ => format_ident!("arg{}", i),
                    });
                    types.push((*pt.ty).clone());
                }
            }
        }
        Ok(Self { names, types })
    }

    /// The caller-side parameters: each argument as a value or an `ObjectRef` to one.
    pub(crate) fn params(&self) -> TokenStream2 {
        let (names, types) = (&self.names, &self.types);
        quote! { #(#names: impl ::miniray::IntoArg<#types>),* }
    }

    /// `let args = vec![..]`: the caller-side parameters in wire form.
    pub(crate) fn collect(&self) -> TokenStream2 {
        let (names, types) = (&self.names, &self.types);
        quote! {
            let args = ::std::vec![
                #( ::miniray::IntoArg::<#types>::into_arg(#names)? ),*
            ];
        }
    }

    /// The worker side: checks the count of `args: &[&[u8]]` and decodes each into a local
    /// of the argument's name.
    pub(crate) fn decode(&self) -> TokenStream2 {
        let (names, types) = (&self.names, &self.types);
        let arity = names.len();
        let indices: Vec<usize> = (0..arity).collect();
        quote! {
            ::miniray::__private::check_arity(args, #arity)?;
            #( let #names: #types = ::miniray::__private::decode_arg(args[#indices], #indices)?; )*
        }
    }
}

fn expand_remote(attr: TokenStream2, func: ItemFn) -> syn::Result<TokenStream2> {
    let settings = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut option_calls = Vec::new();
    for setting in settings {
        let key = setting
            .path
            .get_ident()
            .ok_or_else(|| syn::Error::new_spanned(&setting.path, "expected an option name"))?
            .clone();
        let value: Expr = setting.value;
        match key.to_string().as_str() {
            "num_cpus" => option_calls.push(quote! { .num_cpus((#value) as f64) }),
            "max_retries" => option_calls.push(quote! { .max_retries((#value) as u32) }),
            other => {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!("unknown option `{other}`: expected `num_cpus` or `max_retries`"),
                ));
            }
        }
    }

    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "remote functions must be synchronous: they run on a worker's task thread",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "remote functions cannot be generic: workers look them up by name",
        ));
    }

    let args = ByValueArgs::parse(sig.inputs.iter(), "remote functions")?;
    let (arg_names, params, collect, decode) =
        (&args.names, args.params(), args.collect(), args.decode());
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };

    let vis = &func.vis;
    let name = &sig.ident;
    let doc = format!("Remote form of [`{name}()`](fn@{name}): `remote(..)` submits it as a task.");

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case, dead_code, clippy::all)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The name this function is registered under in every worker.
            pub const NAME: &str = ::core::module_path!();

            /// Submits the function as a task with its default options.
            pub fn remote(#params) -> ::miniray::Result<::miniray::ObjectRef<#ret>> {
                options().remote(#(#arg_names),*)
            }

            /// Options for one submission: `options().num_cpus(2.0).remote(..)`.
            pub fn options() -> Options {
                Options(::miniray::TaskOptions::new(NAME) #(#option_calls)*)
            }

            /// Per-submission options of this function.
            #[derive(Clone, Debug)]
            pub struct Options(::miniray::TaskOptions);

            impl Options {
                /// CPUs the task holds while it runs (default 1).
                pub fn num_cpus(self, n: f64) -> Self { Options(self.0.num_cpus(n)) }
                /// Any other resource the task needs, such as `("GPU", 1.0)`.
                pub fn resource(self, name: impl Into<String>, amount: f64) -> Self {
                    Options(self.0.resource(name, amount))
                }
                /// How often the task is re-run when its worker dies (default 3).
                pub fn max_retries(self, n: u32) -> Self { Options(self.0.max_retries(n)) }
                /// Submits the task; returns at once.
                pub fn remote(self, #params) -> ::miniray::Result<::miniray::ObjectRef<#ret>> {
                    #collect
                    self.0.submit::<#ret>(args)
                }
            }

            fn __invoke(args: &[&[u8]]) -> ::core::result::Result<::std::vec::Vec<u8>, ::miniray::__private::InvokeError> {
                #decode
                let out: #ret = super::#name(#(#arg_names),*);
                ::miniray::__private::encode_return(&out)
            }

            ::miniray::__private::inventory::submit! {
                ::miniray::__private::RemoteFunction { name: NAME, invoke: __invoke }
            }
        }
    })
}

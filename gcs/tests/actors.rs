//! The actor RPCs through a real tonic client. No raylet runs here, so actors stay
//! PENDING_CREATION: enough for every rule that needs no worker (validation, names, kills,
//! waits, job ends, reloads). End-to-end creation with real workers is tested in tests/.

mod common;

use std::sync::Arc;

use common::{
    Client, DEADLINE, actor_info, add_job, code, kill, next_message, register_node, resources,
    start, start_on, subscribe, wait_for_actor,
};
use miniray_common::{ActorId, ErrorCode, JobId, NodeId, WorkerId};
use miniray_gcs::storage::{MemoryStorage, Storage};
use miniray_proto::*;

/// A restartable `Counter` actor called `name` (unnamed if empty), owned by a driver.
fn actor(job: JobId, name: &str) -> ActorInfo {
    ActorInfo {
        name: name.into(),
        owner: Some(WorkerAddress {
            worker_id: WorkerId::random().to_vec(),
            node_id: NodeId::random().to_vec(),
            host: "127.0.0.1".into(),
            port: 1,
        }),
        ..actor_info(job, "Counter", 2)
    }
}

async fn create(client: &mut Client, info: &ActorInfo) -> Result<(), tonic::Status> {
    client
        .create_actor(CreateActorRequest {
            actor: Some(info.clone()),
        })
        .await
        .map(|_| ())
}

async fn get_by_id(client: &mut Client, id: &[u8]) -> Result<ActorInfo, tonic::Status> {
    let reply = client
        .get_actor(GetActorRequest {
            actor_id: id.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(reply.into_inner().actor.unwrap())
}

async fn get_by_name(client: &mut Client, name: &str) -> Result<ActorInfo, tonic::Status> {
    let reply = client
        .get_actor(GetActorRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(reply.into_inner().actor.unwrap())
}

async fn all_actors(client: &mut Client) -> Vec<ActorInfo> {
    client
        .get_all_actors(GetAllActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .actors
}

#[tokio::test]
async fn invalid_create_requests_change_nothing() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let good = actor(job, "a");

    let mut not_creation = good.clone();
    not_creation.creation.as_mut().unwrap().actor_creation = false;
    let mut other_actor = good.clone();
    other_actor.creation.as_mut().unwrap().actor_id = ActorId::random().to_vec();
    let cases = [
        (
            "short actor id",
            ActorInfo {
                actor_id: vec![1, 2, 3],
                ..good.clone()
            },
        ),
        (
            "unknown job",
            ActorInfo {
                job_id: JobId::random().to_vec(),
                ..good.clone()
            },
        ),
        (
            "empty class name",
            ActorInfo {
                class_name: String::new(),
                ..good.clone()
            },
        ),
        (
            "no creation task",
            ActorInfo {
                creation: None,
                ..good.clone()
            },
        ),
        ("creation flag unset", not_creation),
        ("creation for another actor", other_actor),
        (
            "negative resources",
            ActorInfo {
                resources: Some(resources(&[("CPU", -1.0)])),
                ..good.clone()
            },
        ),
        (
            "max_restarts below -1",
            ActorInfo {
                max_restarts: -2,
                ..good.clone()
            },
        ),
    ];
    for (what, info) in cases {
        let err = create(&mut client, &info).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidArgument, "{what}: {err}");
    }
    let err = client
        .create_actor(CreateActorRequest { actor: None })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    assert!(all_actors(&mut client).await.is_empty());

    // The valid request still goes through, and its name was never taken.
    create(&mut client, &good).await.unwrap();
    let stored = get_by_name(&mut client, "a").await.unwrap();
    assert_eq!(stored.state(), ActorState::PendingCreation);
    assert_eq!(stored.num_restarts, 0);
    assert!(stored.create_time_ms > 0);
    gcs.shutdown().await;
}

#[tokio::test]
async fn names_are_unique_and_repeats_are_idempotent() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let first = actor(job, "counter");
    create(&mut client, &first).await.unwrap();
    // The same request again (a client retry) is accepted and changes nothing.
    create(&mut client, &first).await.unwrap();
    assert_eq!(all_actors(&mut client).await.len(), 1);

    let err = create(&mut client, &actor(job, "counter"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    assert!(err.message().contains("\"counter\""), "{}", err.message());

    // Same id, different definition.
    let changed = ActorInfo {
        class_name: "Other".into(),
        ..first.clone()
    };
    let err = create(&mut client, &changed).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);

    // Unnamed actors never conflict.
    create(&mut client, &actor(job, "")).await.unwrap();
    create(&mut client, &actor(job, "")).await.unwrap();
    assert_eq!(all_actors(&mut client).await.len(), 3);
    gcs.shutdown().await;
}

#[tokio::test]
async fn killing_a_pending_actor_frees_its_name() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let mut events = subscribe(&mut client, Channel::ActorChanges).await;
    let info = actor(job, "svc");
    create(&mut client, &info).await.unwrap();
    assert_eq!(
        get_by_name(&mut client, "svc").await.unwrap().actor_id,
        info.actor_id
    );

    kill(&mut client, &info.actor_id, "not needed")
        .await
        .unwrap();
    let dead = get_by_id(&mut client, &info.actor_id).await.unwrap();
    assert_eq!(dead.state(), ActorState::Dead);
    assert_eq!(dead.death_reason, "not needed");

    let err = get_by_name(&mut client, "svc").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    let again = actor(job, "svc");
    create(&mut client, &again).await.unwrap();
    assert_eq!(
        get_by_name(&mut client, "svc").await.unwrap().actor_id,
        again.actor_id
    );

    // Killing a dead actor changes nothing; an unknown one is NotFound.
    kill(&mut client, &info.actor_id, "twice").await.unwrap();
    let still = get_by_id(&mut client, &info.actor_id).await.unwrap();
    assert_eq!(still.death_reason, "not needed");
    let err = kill(&mut client, &ActorId::random().to_vec(), "")
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    // No reason given: a default one.
    kill(&mut client, &again.actor_id, "").await.unwrap();
    assert_eq!(
        get_by_id(&mut client, &again.actor_id)
            .await
            .unwrap()
            .death_reason,
        "killed"
    );

    // Subscribers saw: created, killed, created again, killed.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let msg = next_message(&mut events).await;
        let Some(pub_message::Payload::Actor(a)) = msg.payload else {
            panic!("not an actor event: {msg:?}");
        };
        seen.push((a.actor_id == info.actor_id, a.state()));
    }
    assert_eq!(
        seen,
        [
            (true, ActorState::PendingCreation),
            (true, ActorState::Dead),
            (false, ActorState::PendingCreation),
            (false, ActorState::Dead),
        ]
    );
    gcs.shutdown().await;
}

#[tokio::test]
async fn get_actor_wait_times_out_then_returns_on_kill() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let info = actor(job, "w");
    create(&mut client, &info).await.unwrap();

    // Nothing can create it: the wait ends at its timeout with the current state.
    let waited = wait_for_actor(&mut client, &info.actor_id, 0, 100).await;
    assert_eq!(waited.state(), ActorState::PendingCreation);

    // A long wait (by name) ends as soon as the actor dies.
    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .get_actor(GetActorRequest {
                name: "w".into(),
                wait: true,
                timeout_ms: 0,
                ..Default::default()
            })
            .await
    });
    kill(&mut client, &info.actor_id, "stop waiting")
        .await
        .unwrap();
    let reply = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the wait did not end with the kill")
        .unwrap();
    match reply {
        Ok(reply) => {
            let actor = reply.into_inner().actor.unwrap();
            assert_eq!(actor.state(), ActorState::Dead);
            assert_eq!(actor.death_reason, "stop waiting");
        }
        // The waiter looked the name up only after the kill.
        Err(status) => assert_eq!(code(&status), ErrorCode::NotFound),
    }

    let err = client
        .get_actor(GetActorRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    gcs.shutdown().await;
}

#[tokio::test]
async fn failure_reports_for_other_workers_are_ignored() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let info = actor(job, "");
    create(&mut client, &info).await.unwrap();
    client
        .report_worker_failure(ReportWorkerFailureRequest {
            node_id: NodeId::random().to_vec(),
            worker_id: WorkerId::random().to_vec(),
            reason: "signal: 9 (SIGKILL)".into(),
        })
        .await
        .unwrap();
    let after = get_by_id(&mut client, &info.actor_id).await.unwrap();
    assert_eq!(after.state(), ActorState::PendingCreation);
    assert_eq!(after.num_restarts, 0);

    let err = client
        .report_worker_failure(ReportWorkerFailureRequest {
            node_id: vec![1],
            worker_id: WorkerId::random().to_vec(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    gcs.shutdown().await;
}

#[tokio::test]
async fn a_finished_job_ends_its_actors() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    let other_job = add_job(&mut client).await;
    let a = actor(job, "a");
    let b = actor(job, "");
    let other = actor(other_job, "other");
    for info in [&a, &b, &other] {
        create(&mut client, info).await.unwrap();
    }
    kill(&mut client, &b.actor_id, "early").await.unwrap();
    client
        .mark_job_finished(MarkJobFinishedRequest {
            job_id: job.to_vec(),
        })
        .await
        .unwrap();

    // Ended before the reply: no waiting needed.
    let a_now = get_by_id(&mut client, &a.actor_id).await.unwrap();
    assert_eq!(a_now.state(), ActorState::Dead);
    assert_eq!(a_now.death_reason, "its job finished");
    // An actor that was dead already keeps its reason.
    let b_now = get_by_id(&mut client, &b.actor_id).await.unwrap();
    assert_eq!(b_now.death_reason, "early");
    let other_now = get_by_id(&mut client, &other.actor_id).await.unwrap();
    assert_eq!(other_now.state(), ActorState::PendingCreation);

    // No new actors for a finished job.
    let err = create(&mut client, &actor(job, "late")).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);

    let status = client
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.actors.len(), 3);
    gcs.shutdown().await;
}

#[tokio::test]
async fn a_restarted_gcs_keeps_its_actors() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let (gcs, mut client) = start_on(Arc::clone(&storage)).await;
    let job = add_job(&mut client).await;
    let pending = actor(job, "keep");
    let killed = actor(job, "gone");
    create(&mut client, &pending).await.unwrap();
    create(&mut client, &killed).await.unwrap();
    kill(&mut client, &killed.actor_id, "bye").await.unwrap();
    gcs.shutdown().await;

    let (gcs, mut client) = start_on(storage).await;
    let mut actors = all_actors(&mut client).await;
    actors.sort_by_key(|a| a.name.clone());
    assert_eq!(actors.len(), 2);
    assert_eq!(actors[0].actor_id, killed.actor_id);
    assert_eq!(actors[0].state(), ActorState::Dead);
    assert_eq!(actors[0].death_reason, "bye");
    assert_eq!(actors[1].actor_id, pending.actor_id);
    assert_eq!(actors[1].state(), ActorState::PendingCreation);
    assert_eq!(actors[1].creation, pending.creation);

    // The reloaded actor is fully managed: its name is taken, it can be killed.
    let err = create(&mut client, &actor(job, "keep")).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    kill(&mut client, &pending.actor_id, "").await.unwrap();
    assert_eq!(
        code(&get_by_name(&mut client, "keep").await.unwrap_err()),
        ErrorCode::NotFound
    );
    gcs.shutdown().await;
}

#[tokio::test]
async fn an_actor_on_an_unreachable_node_stays_pending_and_can_be_killed() {
    let (gcs, mut client) = start().await;
    let job = add_job(&mut client).await;
    // A node whose raylet does not listen: every lease request fails and is retried.
    register_node(&mut client, NodeId::random(), 1).await;
    let info = actor(job, "stuck");
    create(&mut client, &info).await.unwrap();
    let waited = wait_for_actor(&mut client, &info.actor_id, 0, 300).await;
    assert_eq!(waited.state(), ActorState::PendingCreation);
    kill(&mut client, &info.actor_id, "gave up").await.unwrap();
    let dead = get_by_id(&mut client, &info.actor_id).await.unwrap();
    assert_eq!(dead.state(), ActorState::Dead);
    assert_eq!(dead.death_reason, "gave up");
    gcs.shutdown().await;
}

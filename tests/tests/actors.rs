//! Actors on whole clusters of real processes: call order, shared state across drivers,
//! names, handles in tasks and actors, kill, restarts after worker death, the pool.

mod support;

use std::time::Duration;

use support::{Cluster, DRIVER_DEADLINE, DriverRun, Options, wait_until};

#[test]
fn ten_thousand_calls_from_one_handle_run_in_order() {
    let cluster = Cluster::start(Options::default());
    let run = cluster.run_driver(&["actor_order"]);
    run.assert_success();
    assert_eq!(run.get("lens_in_order"), "true");
    assert_eq!(run.get("seen_in_order"), "true");
    assert_eq!(run.get("seen_len"), "10000");
}

#[test]
fn panics_names_handles_kill_and_unreferenced_actors() {
    let cluster = Cluster::start(Options::default());
    let run = cluster.run_driver(&["actor_features"]);
    run.assert_success();
    // A panic fails the call with its message; the state it changed stays, the actor lives.
    assert_eq!(run.get("panic_kind"), "task_failed");
    assert!(run.get("panic_message").contains("boom in a method"));
    assert!(
        run.get("panic_message")
            .contains("Recorder.push_then_panic")
    );
    assert_eq!(run.get("after_panic_len"), "2");
    // Handles passed to a task and to another actor reach the same state.
    assert_eq!(run.get("from_task"), "3");
    assert_eq!(run.get("from_actor"), "4");
    assert_eq!(run.get("seen"), "[1, 2, 10, 20]");
    // Names.
    assert_eq!(run.get("named_value"), "7");
    assert_eq!(run.get("duplicate_name_kind"), "invalid_argument");
    assert!(
        run.get("duplicate_name_message")
            .contains("features-counter")
    );
    assert_eq!(run.get("unknown_name_kind"), "actor_not_found");
    assert_eq!(run.get("wrong_class_kind"), "invalid_argument");
    // Kill.
    assert_eq!(run.get("after_kill_kind"), "actor_died");
    assert!(run.get("after_kill_message").contains("killed"));
    assert_eq!(run.get("name_reused"), "ok:100");
    assert_eq!(run.get("bad_option_kind"), "invalid_argument");
    assert_eq!(run.get("infeasible_kind"), "infeasible");
    // Dropping the last handle of an unnamed actor stops its worker.
    assert_eq!(run.get("dropped_actor_exited"), "true");
}

#[test]
fn actors_restart_after_their_worker_dies_then_die_for_good() {
    let cluster = Cluster::start(Options::default());
    let dir = cluster.session_dir.join("restart-marks");
    std::fs::create_dir_all(&dir).expect("marks dir");
    let dir_arg = dir.to_string_lossy().to_string();
    let run = cluster.run_driver(&["actor_restart", &dir_arg]);
    run.assert_success();
    // SIGKILL with a restart left: the constructor re-ran (state 0) in a new process.
    assert_eq!(run.get("after_restart_value"), "1");
    assert_eq!(run.get("restarted_in_new_process"), "true");
    // SIGKILL with no restart left: ActorDied, saying why.
    assert_eq!(run.get("out_of_restarts_kind"), "actor_died");
    assert!(
        run.get("out_of_restarts_message").contains("restarts"),
        "{}",
        run.get("out_of_restarts_message")
    );
    // A call in flight is retried on the restarted actor with max_task_retries.
    assert_eq!(run.get("retried_elsewhere"), "true");
    // Without retries a call in flight fails; the restarted actor serves the next one.
    assert_eq!(run.get("abort_in_flight_kind"), "actor_died");
    assert_eq!(run.get("after_abort"), "ok:7");
}

#[test]
fn an_actor_whose_node_dies_restarts_on_another_node() {
    let mut cluster = Cluster::start(Options {
        node_timeout: Duration::from_secs(2),
        ..Options::default()
    });
    let a = cluster.add_node(1.0, &[("side", 1.0)], false, 1 << 30);
    let b = cluster.add_node(1.0, &[("side", 1.0)], false, 1 << 30);
    let dir = cluster.session_dir.join("node-loss-marks");
    std::fs::create_dir_all(&dir).expect("marks dir");
    let driver = cluster.spawn_driver(&["actor_node_loss", &dir.to_string_lossy()]);
    let placed = dir.join("placed");
    wait_until("the actor is placed", Duration::from_secs(60), || {
        placed.exists()
    });
    let node = std::fs::read_to_string(&placed).expect("placement written");
    let victim = [a, b]
        .into_iter()
        .find(|&i| cluster.nodes[i].node_id.to_string() == node)
        .expect("the actor runs on a node with the resource");
    cluster.kill_node(victim);
    std::fs::write(dir.join("killed"), b"").expect("mark written");
    let run = DriverRun::wait(driver, DRIVER_DEADLINE);
    run.assert_success();
    let survivor = if victim == a { b } else { a };
    assert_eq!(run.get("first_node"), node);
    assert_eq!(
        run.get("second_node"),
        cluster.nodes[survivor].node_id.to_string()
    );
    assert_eq!(run.get("value_after_restart"), "0");
}

#[test]
fn a_named_actor_is_shared_by_two_drivers() {
    let cluster = Cluster::start(Options::default());
    let owner = cluster.spawn_driver(&["actor_named_owner", "shared-counter"]);
    push_session_contract(&cluster, "shared-counter");
    let user = cluster.run_driver(&["actor_named_user", "shared-counter"]);
    let owner = DriverRun::wait(owner, DRIVER_DEADLINE);
    user.assert_success();
    owner.assert_success();
    assert_eq!(owner.get("created"), "true");
    // The user's ten increments and the owner's one all reached the same state; the raw
    // session's calls changed nothing.
    assert_eq!(owner.get("owner_sees"), "11");
    let last: u64 = user.get("user_last").parse().expect("a number");
    assert!((10..=11).contains(&last), "user saw {last}");
}

#[test]
fn the_actor_pool_serves_a_stream_of_work() {
    let cluster = Cluster::start(Options::default());
    let run = cluster.run_driver(&["actor_pool"]);
    run.assert_success();
    let doubled: Vec<u64> = (0..9).map(|x| 2 * x).collect();
    assert_eq!(run.get("ordered"), format!("{doubled:?}"));
    assert_eq!(run.get("unordered_sorted_equal"), "true");
    assert_eq!(run.get("unordered_differs"), "true");
    assert_eq!(run.get("mapped"), "[0, 2, 4, 6, 8]");
    assert_eq!(run.get("empty_get_kind"), "invalid_argument");
}

/// The worker side of a push session, spoken directly to a named actor's worker: the token
/// is required; one session carries several batches, answered in order; a call of an
/// unknown method gets a typed error and the actor serves on; an empty batch ends the
/// session with `InvalidArgument`.
fn push_session_contract(cluster: &Cluster, name: &str) {
    use miniray_proto::core_worker_client::CoreWorkerClient;
    use miniray_proto::gcs_client::GcsClient;
    use miniray_proto::{
        ErrorKind, GetActorRequest, PushTasksRequest, TaskSpec, WorkerAddress, push_task_reply,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let gcs = miniray_common::auth::connect(&cluster.gcs_address, &cluster.token)
            .await
            .expect("gcs connects");
        // The owner driver registers the name shortly; wait for it, then for ALIVE.
        let mut gcs = GcsClient::new(gcs);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let actor = loop {
            let found = gcs
                .get_actor(GetActorRequest {
                    name: name.into(),
                    wait: true,
                    timeout_ms: 30_000,
                    ..Default::default()
                })
                .await;
            match found {
                Ok(reply) => break reply.into_inner().actor.expect("actor info"),
                Err(status)
                    if status.code() == tonic::Code::NotFound
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(status) => panic!("looking up {name:?}: {status:?}"),
            }
        };
        let worker = actor.address.expect("the actor is alive on a worker");
        let endpoint = format!("{}:{}", worker.host, worker.port);

        let call = |method: &str| TaskSpec {
            task_id: miniray_common::TaskId::random().to_vec(),
            job_id: actor.job_id.clone(),
            function_name: method.into(),
            return_id: miniray_common::ObjectId::random().to_vec(),
            caller: Some(WorkerAddress {
                host: "127.0.0.1".into(),
                port: 1,
                ..Default::default()
            }),
            actor_id: actor.actor_id.clone(),
            ..Default::default()
        };

        // Without the token the session is refused.
        let bare = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let refused = CoreWorkerClient::new(bare)
            .push_tasks(tokio_stream::iter([PushTasksRequest {
                specs: vec![call("value")],
            }]))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        let channel = miniray_common::auth::connect(&endpoint, &cluster.token)
            .await
            .expect("worker connects");
        let (batches, outgoing) = tokio::sync::mpsc::unbounded_channel();
        let mut replies = CoreWorkerClient::new(channel)
            .push_tasks(tokio_stream::wrappers::UnboundedReceiverStream::new(
                outgoing,
            ))
            .await
            .expect("session opens")
            .into_inner();

        let unknown = call("no_such_method");
        let value = call("value");
        batches
            .send(PushTasksRequest {
                specs: vec![unknown.clone(), value.clone()],
            })
            .expect("batch sent");
        let first = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(first.task_id, unknown.task_id);
        match first.outcome {
            Some(push_task_reply::Outcome::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::UnknownFunction as i32, "{e:?}");
                assert!(e.message.contains("no_such_method"), "{e:?}");
            }
            other => panic!("an unknown method answered {other:?}"),
        }
        let second = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(second.task_id, value.task_id);
        assert!(
            matches!(second.outcome, Some(push_task_reply::Outcome::Value(_))),
            "{second:?}"
        );

        // A second batch on the same session.
        let again = call("value");
        batches
            .send(PushTasksRequest {
                specs: vec![again.clone()],
            })
            .expect("batch sent");
        let third = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(third.task_id, again.task_id);
        assert!(matches!(
            third.outcome,
            Some(push_task_reply::Outcome::Value(_))
        ));

        batches
            .send(PushTasksRequest { specs: vec![] })
            .expect("batch sent");
        let end = replies
            .message()
            .await
            .expect_err("an empty batch ends the session");
        assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    });
}

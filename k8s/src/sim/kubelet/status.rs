//! A Pod's status as the kubelet knows it, and the `status` object it writes to the API.
//!
//! Invariants of [`PodRecord::status`]: the phase follows the containers (all waiting:
//! `Pending`; any running: `Running`; all terminated: `Succeeded` when every exit code is
//! 0, else `Failed`) unless a phase is forced (`fail`, unschedulable); `Ready` and
//! `ContainersReady` are true only while the phase is `Running` and every container is
//! ready; `podIP`/`podIPs` appear once the Pod has an address and stay after it ends.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The current time, as the API writes it.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The state of one container.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        started_at: Option<Time>,
        finished_at: Time,
        message: Option<String>,
    },
}

/// One container as the kubelet runs it.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub state: State,
    /// Passed its readiness probe (or has none) while running.
    pub ready: bool,
    /// `miniray-sim://<pid>` once started.
    pub container_id: Option<String>,
}

impl ContainerRecord {
    pub fn waiting(name: &str, image: &str, reason: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            image: image.into(),
            state: State::Waiting {
                reason: reason.into(),
                message: None,
            },
            ready: false,
            container_id: None,
        }
    }

    fn status(&self) -> ContainerStatus {
        let state = match &self.state {
            State::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            State::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            },
            State::Terminated {
                exit_code,
                started_at,
                finished_at,
                message,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(
                        if *exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        }
                        .into(),
                    ),
                    message: message.clone(),
                    started_at: started_at.clone(),
                    finished_at: Some(finished_at.clone()),
                    container_id: self.container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let running = matches!(self.state, State::Running { .. });
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            // No registry: the image is known by its name only.
            image_id: format!("miniray-sim://{}", self.image),
            container_id: self.container_id.clone(),
            ready: self.ready && running,
            started: Some(running),
            restart_count: 0,
            state: Some(state),
            ..Default::default()
        }
    }
}

/// A phase set regardless of the containers.
#[derive(Clone, Debug, PartialEq)]
pub enum Forced {
    /// `PodScheduled=False` with this reason and message; the Pod stays `Pending`.
    Unschedulable { message: String },
    /// `Failed` with this reason and message.
    Failed { reason: String, message: String },
}

/// Everything the kubelet knows of a Pod's status.
#[derive(Clone, Debug, Default)]
pub struct PodRecord {
    pub forced: Option<Forced>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    pub start_time: Option<Time>,
    pub containers: Vec<ContainerRecord>,
    /// Kept so condition times only move when the condition changes.
    pub scheduled_at: Option<Time>,
}

impl PodRecord {
    /// `Pending`, `Running`, `Succeeded` or `Failed` (see the module doc).
    pub fn phase(&self) -> &'static str {
        match &self.forced {
            Some(Forced::Unschedulable { .. }) => return "Pending",
            Some(Forced::Failed { .. }) => return "Failed",
            None => {}
        }
        let terminated: Vec<i32> = self
            .containers
            .iter()
            .filter_map(|c| match c.state {
                State::Terminated { exit_code, .. } => Some(exit_code),
                _ => None,
            })
            .collect();
        if self.containers.is_empty() {
            "Pending"
        } else if terminated.len() == self.containers.len() {
            if terminated.iter().all(|&c| c == 0) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self
            .containers
            .iter()
            .any(|c| matches!(c.state, State::Running { .. }))
        {
            "Running"
        } else {
            "Pending"
        }
    }

    /// Whether the phase is `Succeeded` or `Failed` (the Pod runs no more).
    pub fn terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    /// Whether the Pod is `Running` with every container ready.
    pub fn ready(&self) -> bool {
        self.phase() == "Running" && self.containers.iter().all(|c| c.ready)
    }

    /// The `status` object.
    pub fn status(&self) -> PodStatus {
        let phase = self.phase();
        let at = self.scheduled_at.clone().unwrap_or_else(now);
        let condition =
            |type_: &str, ok: bool, reason: Option<&str>, message: Option<&str>| PodCondition {
                type_: type_.into(),
                status: if ok { "True" } else { "False" }.into(),
                reason: reason.map(str::to_string),
                message: message.map(str::to_string),
                last_transition_time: Some(at.clone()),
                ..Default::default()
            };
        let mut status = PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        };
        match &self.forced {
            Some(Forced::Unschedulable { message }) => {
                status.conditions = Some(vec![condition(
                    "PodScheduled",
                    false,
                    Some("Unschedulable"),
                    Some(message),
                )]);
                return status;
            }
            Some(Forced::Failed { reason, message }) => {
                status.reason = Some(reason.clone());
                status.message = Some(message.clone());
            }
            None => {}
        }
        let ready = self.ready();
        let not_ready = (!ready).then(|| {
            let waiting: Vec<&str> = self
                .containers
                .iter()
                .filter(|c| !c.ready || !matches!(c.state, State::Running { .. }))
                .map(|c| c.name.as_str())
                .collect();
            format!("containers with unready status: [{}]", waiting.join(" "))
        });
        let reason = (!ready).then_some("ContainersNotReady");
        status.conditions = Some(vec![
            condition("PodScheduled", true, None, None),
            condition("Initialized", true, None, None),
            condition("ContainersReady", ready, reason, not_ready.as_deref()),
            condition("Ready", ready, reason, not_ready.as_deref()),
        ]);
        status.host_ip.clone_from(&self.host_ip);
        status.host_ips = self.host_ip.clone().map(|ip| vec![HostIP { ip }]);
        status.pod_ip.clone_from(&self.pod_ip);
        status.pod_ips = self.pod_ip.clone().map(|ip| vec![PodIP { ip }]);
        status.start_time.clone_from(&self.start_time);
        status.container_statuses = Some(self.containers.iter().map(|c| c.status()).collect());
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(states: Vec<(State, bool)>) -> PodRecord {
        PodRecord {
            pod_ip: Some("10.214.1.2".into()),
            host_ip: Some("10.214.1.1".into()),
            start_time: Some(now()),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, (state, ready))| ContainerRecord {
                    name: format!("c{i}"),
                    image: "img".into(),
                    state,
                    ready,
                    container_id: Some(format!("miniray-sim://{i}")),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn phases_follow_the_containers() {
        let waiting = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        let running = State::Running { started_at: now() };
        let exited = |code| State::Terminated {
            exit_code: code,
            started_at: None,
            finished_at: now(),
            message: None,
        };
        assert_eq!(record(vec![(waiting.clone(), false)]).phase(), "Pending");
        let r = record(vec![(running.clone(), true), (exited(0), false)]);
        assert_eq!(r.phase(), "Running");
        assert!(!r.ready());
        assert_eq!(record(vec![(exited(0), false)]).phase(), "Succeeded");
        assert_eq!(
            record(vec![(exited(0), false), (exited(2), false)]).phase(),
            "Failed"
        );

        let r = record(vec![(running, true)]);
        let s = r.status();
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.214.1.2"));
        assert_eq!(s.pod_ips.as_ref().map(Vec::len), Some(1));
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        assert!(cs.ready && cs.started == Some(true));
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());

        let s = record(vec![(exited(3), false)]).status();
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(cond(&s, "Ready").status, "False");
        let term = s.container_statuses.as_ref().expect("statuses")[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("terminated");
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
    }

    #[test]
    fn forced_phases() {
        let mut r = record(Vec::new());
        r.forced = Some(Forced::Unschedulable {
            message: "no".into(),
        });
        let s = r.status();
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = cond(&s, "PodScheduled");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("Unschedulable"))
        );
        assert!(s.pod_ip.is_none());
        r.forced = Some(Forced::Failed {
            reason: "SimulatedFailure".into(),
            message: "m".into(),
        });
        let s = r.status();
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some("SimulatedFailure"));
        // The JSON has the API's field names.
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["phase"], "Failed");
        assert!(v["conditions"].is_array());
    }
}

//! Several `order-worker` processes consuming the same source: the workers
//! the fault scenario ([`crate::fault`]) kills, restarts and stops. The
//! single-node suites run a fleet of one.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use rand::Rng;

use crate::worker::{Worker, log_tail};

/// One worker process of the fleet: how it is started and where it logs.
#[derive(Debug)]
struct Member {
    worker: Worker,
    args: Vec<String>,
    log: PathBuf,
}

/// Worker processes on one source, each with its own arguments and log.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
    /// Exits of static Kafka members fenced by the group coordinator
    /// (`FENCED_INSTANCE_ID`): expected when a broker is lost, restarted like
    /// any exit, reported apart from the unexpected ones.
    pub fenced: usize,
    /// Exits of Kafka workers whose transactional producer blocked in a
    /// call past its timeout (`TRANSACTIONAL_CALL_STUCK`, a librdkafka
    /// defect when the group coordinator is lost): expected when a broker
    /// is lost, restarted like any exit, reported apart.
    pub stuck: usize,
}

impl Fleet {
    /// Starts one worker per `(args, log)`.
    pub fn spawn(members: Vec<(Vec<String>, PathBuf)>) -> std::io::Result<Fleet> {
        let members = members
            .into_iter()
            .map(|(args, log)| {
                Ok(Member {
                    worker: Worker::spawn(&args, &log)?,
                    args,
                    log,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Fleet {
            members,
            fenced: 0,
            stuck: 0,
        })
    }

    /// A fleet of one worker.
    pub fn one(args: &[String], log: &Path) -> std::io::Result<Fleet> {
        Fleet::spawn(vec![(args.to_vec(), log.to_owned())])
    }

    /// How many workers it has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when it has no workers.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Restarts every worker that exited on its own; an exit of a fenced
    /// static member counts in [`Fleet::fenced`], one of a stuck
    /// transactional producer in [`Fleet::stuck`], any other one is pushed
    /// to `unexpected` with the end of its log.
    pub fn restart_exited(&mut self, unexpected: &mut Vec<String>) {
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(status) = m.worker.exited() {
                let tail = m.worker.log_tail(5);
                if tail.contains("FENCED_INSTANCE_ID") {
                    self.fenced += 1;
                    eprintln!("worker {i}: fenced static member exited ({status}); restarting");
                } else if let Some(call) = stuck_call(&tail) {
                    self.stuck += 1;
                    eprintln!(
                        "worker {i}: transactional producer stuck ({call}), exited ({status}); restarting"
                    );
                } else {
                    unexpected.push(format!("worker {i}: {status}: {tail}"));
                }
                m.worker = Worker::spawn(&m.args, &m.log).expect("restart the worker");
            }
        }
    }

    /// SIGKILLs a random worker and starts it again; returns its index.
    pub fn kill9_one(&mut self) -> usize {
        let i = rand::rng().random_range(0..self.members.len());
        let m = &mut self.members[i];
        m.worker.kill9().expect("SIGKILL the worker");
        m.worker = Worker::spawn(&m.args, &m.log).expect("restart the worker");
        i
    }

    /// SIGKILLs the worker of process `pid` and starts it again; its index,
    /// or `None` if no worker has that pid.
    pub fn kill9_pid(&mut self, pid: u32) -> Option<usize> {
        let i = self.members.iter().position(|m| m.worker.pid() == pid)?;
        let m = &mut self.members[i];
        m.worker.kill9().expect("SIGKILL the worker");
        m.worker = Worker::spawn(&m.args, &m.log).expect("restart the worker");
        Some(i)
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to worker `i` without restarting it.
    pub fn signal(&self, i: usize, signal: &str) -> std::io::Result<()> {
        let pid = self.members[i].worker.pid().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), pid.as_str()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -{signal} {pid}: {status}"
            )))
        }
    }

    /// The log of worker `i`.
    pub fn log_of(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Sends SIGTERM to every worker and waits up to `deadline` for each;
    /// one status per worker (`None`: it did not stop). A worker that had
    /// already exited, or exits now, because its transactional producer
    /// was stuck counts in [`Fleet::stuck`] and reads as a clean stop: it
    /// stopped as designed, and what it held runs again on its restart.
    pub async fn terminate(&mut self, deadline: Duration) -> Vec<Option<ExitStatus>> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            let status = m.worker.terminate(deadline).await;
            if status.is_none() {
                // Where it hangs: the test fails on it (`assert_stopped`).
                eprintln!(
                    "worker {i} did not stop within {deadline:?} of SIGTERM; its log ends:\n{}",
                    m.worker.log_tail(20)
                );
            }
            let failed = status.is_some_and(|s| !s.success());
            if failed && let Some(call) = stuck_call(&m.worker.log_tail(5)) {
                self.stuck += 1;
                eprintln!("worker {i}: transactional producer stuck ({call}), exited at the stop");
                out.push(Some(ExitStatus::default()));
            } else {
                out.push(status);
            }
        }
        out
    }

    /// The last `lines` lines of every worker's log, each under its index.
    pub fn log_tail(&self, lines: usize) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("[worker {i}]\n{}", log_tail(&m.log, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Duplicates the workers suppressed ([`crate::scrape`]), all logs together.
    pub fn duplicates_suppressed(&self) -> u64 {
        self.members
            .iter()
            .map(|m| crate::scrape::duplicates_suppressed(&m.log))
            .sum()
    }

    /// Deletes the logs (call once the run passed).
    pub fn remove_logs(&self) {
        for m in &self.members {
            let _ = std::fs::remove_file(&m.log);
        }
    }
}

/// The call named by a worker's `TRANSACTIONAL_CALL_STUCK` error in `tail`.
fn stuck_call(tail: &str) -> Option<&str> {
    let why = tail
        .lines()
        .find_map(|l| l.split("TRANSACTIONAL_CALL_STUCK: ").nth(1))?;
    why.split(';').next()
}

/// Asserts that every worker stopped, and cleanly, after SIGTERM (`statuses`
/// from [`Fleet::terminate`]: `None` is a worker that did not stop in time).
pub fn assert_stopped(statuses: Vec<Option<ExitStatus>>) {
    for (i, status) in statuses.into_iter().enumerate() {
        let status =
            status.unwrap_or_else(|| panic!("worker {i} did not stop in time after SIGTERM"));
        assert!(status.success(), "worker {i} exited with {status}");
    }
}

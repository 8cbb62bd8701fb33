//! Rolling updates across a cluster (issue 9), judged by what the registry
//! says: three real agents on one machine (each its own node name, state
//! dir, runc root and HTTP port) against real Consul, and real etcd, four
//! replicas of one registered service with a health check and
//! `parallelism: 1`.
//!
//! - a good update: at every moment at least 3 replicas are passing, and
//!   all 4 end passing on the new config hash;
//! - an update whose health check fails, with `failure_action: rollback`:
//!   the service returns to the old hash, at least 3 replicas passing
//!   throughout, and no replica that was never advanced is restarted.
//!
//! "At every moment" is sampled by a thread for the whole update, read
//! without cntnr:
//! - Consul: `/v1/health/service/<name>?passing` with blocking queries.
//!   Consul answers each change of the service's health index, so the only
//!   states not seen are ones that lasted less than one request's round
//!   trip.
//! - etcd: `etcdctl watch` of the `services/<name>/` records from the
//!   revision of a first listing: every revision is seen. A record passes
//!   when its status is passing and it was refreshed within its check TTL
//!   (the registry's rule), judged at each revision and every 100 ms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cntnr_e2e::shared_etcd;
use common::{consul_get, deploy, status_record, text, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const REPLICAS: usize = 4;

/// The passing instances of a `/v1/health/service/<name>?passing` answer:
/// instance id → the `config_hash` in its meta (the key registration
/// writes, `registration::meta::CONFIG_HASH`).
fn passing_of(body: &str) -> BTreeMap<String, String> {
    let v: Value = serde_json::from_str(body).expect("health JSON");
    v.as_array()
        .expect("health answer is an array")
        .iter()
        .map(|e| {
            let svc = &e["Service"];
            (
                svc["ID"].as_str().unwrap().to_string(),
                svc["Meta"]["config_hash"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// What Consul says now: the passing instances of `name`.
fn consul_passing(name: &str) -> BTreeMap<String, String> {
    consul_get(
        &format!("/v1/health/service/{name}?passing"),
        Duration::from_secs(10),
    )
    .map(|(_, b)| passing_of(&b))
    .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The etcd registry's records of one name: key → record.
type Records = BTreeMap<String, Value>;

/// The passing ones among `records` at `now` (status passing, refreshed
/// within its check TTL): instance id → config hash.
fn passing_records(records: &Records, now: u64) -> BTreeMap<String, String> {
    records
        .values()
        .filter(|r| {
            r["status"] == "passing"
                && now <= r["updated_ms"].as_u64().unwrap() + r["check_ttl_ms"].as_u64().unwrap()
        })
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["meta"]["config_hash"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .expect("etcdctl prints base64")
}

/// `etcdctl get --prefix DIR -w json`: the records and the revision.
fn etcd_list(dir: &str) -> (Records, u64) {
    let out = shared_etcd().etcdctl(&["get", "--prefix", dir, "-w", "json"]);
    assert!(out.status.success(), "etcdctl get: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl JSON");
    let records = v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                text(&b64(&kv["key"])),
                serde_json::from_slice(&b64(&kv["value"])).expect("record JSON"),
            )
        })
        .collect();
    (records, v["header"]["revision"].as_u64().unwrap())
}

/// The registry's prefix of `name`'s records.
fn records_dir(s: &TestStore, name: &str) -> String {
    s.key(&format!("services/{name}/"))
}

/// What the registry says now: the passing instances of `name` (instance
/// id → the `config_hash` in its meta).
fn passing(s: &TestStore, name: &str) -> BTreeMap<String, String> {
    match s.kind {
        Kind::Consul => consul_passing(name),
        Kind::Etcd => passing_records(&etcd_list(&records_dir(s, name)).0, now_ms()),
        Kind::Dir => unreachable!("one node only"),
    }
}

/// Follows the passing instances of a name on a thread, from its start
/// until [`Sampler::finish`], keeping every state seen.
struct Sampler {
    seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `etcdctl watch`, on etcd.
    watch: Option<Child>,
}

impl Sampler {
    fn start(s: &TestStore, name: &str) -> Sampler {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let mut watch = None;
        let thread = match s.kind {
            Kind::Consul => {
                let name = name.to_string();
                std::thread::spawn(move || consul_follow(&name, &seen2, &stop2))
            }
            Kind::Etcd => {
                let dir = records_dir(s, name);
                let (records, rev) = etcd_list(&dir);
                let mut child = Command::new(cntnr_e2e::dep_bin("etcdctl"))
                    .arg(format!("--endpoints={}", shared_etcd().url()))
                    .args(["watch", "--prefix", &dir, "-w", "json"])
                    .arg(format!("--rev={}", rev + 1))
                    .env_remove("ETCDCTL_ENDPOINTS")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn etcdctl watch");
                let out = child.stdout.take().unwrap();
                watch = Some(child);
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { return };
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
                std::thread::spawn(move || etcd_follow(records, &rx, &seen2, &stop2))
            }
            Kind::Dir => unreachable!("one node only"),
        };
        let sampler = Sampler {
            seen,
            stop,
            thread: Some(thread),
            watch,
        };
        common::wait_for(WAIT, "the sampler's first state", || {
            (!sampler.seen.lock().unwrap().is_empty()).then_some(())
        });
        sampler
    }

    /// Stops following; every state seen, in order.
    fn finish(mut self) -> Vec<BTreeMap<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.watch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Blocking queries on `/v1/health/service/<name>?passing`: one state per
/// answer (the first, index 0, comes at once: the state at the start).
fn consul_follow(name: &str, seen: &Mutex<Vec<BTreeMap<String, String>>>, stop: &AtomicBool) {
    let mut index = 0;
    while !stop.load(Ordering::SeqCst) {
        let path = format!("/v1/health/service/{name}?passing&index={index}&wait=1s");
        match consul_get(&path, Duration::from_secs(10)) {
            Some((i, body)) => {
                // Consul's documented rule: an index that goes backwards
                // restarts from 0.
                index = if i < index { 0 } else { i };
                seen.lock().unwrap().push(passing_of(&body));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Applies `etcdctl watch -w json` answers to `records`, one state per
/// revision, and one every 100 ms without news (a record can stop passing
/// when its TTL lapses, with no write).
fn etcd_follow(
    mut records: Records,
    lines: &mpsc::Receiver<String>,
    seen: &Mutex<Vec<BTreeMap<String, String>>>,
    stop: &AtomicBool,
) {
    seen.lock()
        .unwrap()
        .push(passing_records(&records, now_ms()));
    while !stop.load(Ordering::SeqCst) {
        let line = match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                seen.lock()
                    .unwrap()
                    .push(passing_records(&records, now_ms()));
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("etcdctl watch ended"),
        };
        let v: Value = serde_json::from_str(&line).expect("etcdctl watch JSON");
        let mut rev = None;
        for ev in v["Events"].as_array().into_iter().flatten() {
            let kv = &ev["kv"];
            let r = kv["mod_revision"].as_u64();
            // One state per revision (a response may carry several).
            if rev.is_some() && rev != r {
                seen.lock()
                    .unwrap()
                    .push(passing_records(&records, now_ms()));
            }
            rev = r;
            let key = text(&b64(&kv["key"]));
            if ev["type"] == 1 || ev["type"] == "DELETE" {
                records.remove(&key);
            } else {
                records.insert(
                    key,
                    serde_json::from_slice(&b64(&kv["value"])).expect("record JSON"),
                );
            }
        }
        seen.lock()
            .unwrap()
            .push(passing_records(&records, now_ms()));
    }
}

/// The fewest passing instances among `samples`, and the answer showing it.
fn fewest(samples: &[BTreeMap<String, String>]) -> (usize, BTreeMap<String, String>) {
    samples
        .iter()
        .min_by_key(|s| s.len())
        .map(|s| (s.len(), s.clone()))
        .expect("at least one sample")
}

/// Four replicas of `web`, registered as `name` (host network, so the
/// registry has an address for them), a compose health check on a file
/// the command creates (`healthy: false` never creates it), `version` in
/// the environment (so the config hash), rolled one at a time.
fn web(name: &str, version: u32, healthy: bool) -> String {
    let image = common::test_image_ref();
    let cmd = if healthy {
        "touch /tmp/ok; exec sleep 3600"
    } else {
        "exec sleep 3600"
    };
    format!(
        "services:\n  web:\n    image: {image}\n    network_mode: host\n    stop_grace_period: 1s\n    command: [sh, -c, '{cmd}']\n    environment: {{V: '{version}'}}\n    annotations: {{cntnr.service.name: {name}}}\n    healthcheck: {{test: [CMD-SHELL, 'test -f /tmp/ok'], interval: 1s, timeout: 2s, retries: 1}}\n    deploy: {{replicas: {REPLICAS}, update_config: {{parallelism: 1, monitor: 2s, failure_action: rollback}}}}\n"
    )
}

fn schedule(s: &TestStore, project: &str) -> Value {
    s.raw_get(&s.key(&format!("schedule/{project}")))
        .map(|t| serde_json::from_str(&t).expect("schedule record is JSON"))
        .unwrap_or(Value::Null)
}

/// The config hash of every replica the nodes' status records list.
fn status_hashes(s: &TestStore, agents: &[Agent], project: &str) -> BTreeMap<u64, String> {
    agents
        .iter()
        .filter_map(|a| status_record(s, project, &a.node))
        .flat_map(|st| {
            st["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .map(|c| {
            (
                c["replica"].as_u64().unwrap(),
                c["config_hash"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until the leader recorded the project fully healthy (the
/// schedule has a `healthy_spec` and no rollout in progress, or only a
/// finished one with `phase`), all four replicas pass in Consul on one
/// hash, and the status records agree (hash, and registry `passing`);
/// returns that hash.
fn settled(
    s: &TestStore,
    agents: &[Agent],
    project: &str,
    name: &str,
    phase: Option<&str>,
) -> String {
    common::wait_for(WAIT, "four replicas passing on one hash, recorded", || {
        let sched = schedule(s, project);
        let rollout_done = match phase {
            None => sched.get("rollouts").is_none(),
            Some(p) => sched["rollouts"]["web"]["phase"] == p,
        };
        if !sched["healthy_spec"].is_string() || !rollout_done {
            return None;
        }
        let now = passing(s, name);
        let hashes: BTreeSet<&String> = now.values().collect();
        if now.len() != REPLICAS || hashes.len() != 1 {
            return None;
        }
        let h = hashes.into_iter().next().unwrap().clone();
        let st = status_hashes(s, agents, project);
        // Each status record also says its entry is written passing (what
        // the leader waits for before the next step).
        let registry = status_registry(s, agents, project);
        (st.len() == REPLICAS
            && st.values().all(|x| *x == h)
            && registry == BTreeSet::from(["passing".to_string()]))
        .then_some(h)
    })
}

/// The `registry` field of every container in the project's status records.
fn status_registry(s: &TestStore, agents: &[Agent], project: &str) -> BTreeSet<String> {
    agents
        .iter()
        .filter_map(|a| status_record(s, project, &a.node))
        .flat_map(|st| st["containers"].as_array().cloned().unwrap_or_default())
        .map(|c| c["registry"].as_str().unwrap_or("absent").to_string())
        .collect()
}

/// Running replicas everywhere: container id → (node, init pid).
fn pids(agents: &[Agent]) -> BTreeMap<String, (String, u64)> {
    common::wait_for(WAIT, "four containers listed", || {
        let m: BTreeMap<String, (String, u64)> = agents
            .iter()
            .flat_map(|a| {
                common::running(a)
                    .into_iter()
                    .map(|(id, pid)| (id, (a.node.clone(), pid)))
            })
            .collect();
        (m.len() == REPLICAS).then_some(m)
    })
}

/// Asserts the sampled answers never showed fewer than 3 passing, and
/// only the two hashes of the update.
fn assert_three_passing_throughout(
    what: &str,
    samples: &[BTreeMap<String, String>],
    hashes: [&str; 2],
) {
    let (min, at) = fewest(samples);
    assert!(
        min >= REPLICAS - 1,
        "{what}: at least {} replicas passing in the registry at every moment; saw {min} in state \
         {at:?} (of {} states)",
        REPLICAS - 1,
        samples.len()
    );
    // The instrument works: each update takes a replica out of passing
    // (stop-first), and the sampler saw it.
    assert!(
        samples.iter().any(|s| s.len() < REPLICAS),
        "{what}: the sampler never saw a replica out of passing ({} states)",
        samples.len()
    );
    eprintln!(
        "{what}: {} states sampled, fewest passing {min}",
        samples.len()
    );
    let seen: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.values().map(String::as_str))
        .collect();
    for h in &seen {
        assert!(hashes.contains(h), "{what}: unexpected hash {h} passing");
    }
}

fn rolling_update_keeps_three_of_four_passing_and_rolls_back_a_failing_version(kind: Kind) {
    let s = TestStore::new(kind, "rc");
    // Consul service ids are `<node>/<container>` per Consul agent, and
    // every test shares one: node and service names unique to this test.
    let base = s.prefix.replace('-', "");
    let name = format!("web{base}");
    // Nothing here waits for a session to lapse; the check TTL is the
    // session TTL, so a longer one keeps a loaded machine's late refresh
    // from reading as a failed replica.
    let ttl = "10s";
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            s.agent_with(
                &format!("{base}{n}"),
                &[
                    "--allow-host-network",
                    "--address",
                    "127.0.0.1",
                    "--session-ttl",
                    ttl,
                ],
                &[],
            )
        })
        .collect();
    common::wait_for(WAIT, "three nodes and a leader", || {
        let v = s.cntnr_json(&["nodes"]);
        (v["nodes"].as_array().map(Vec::len) == Some(3) && v["leader"].is_string()).then_some(())
    });
    let p = "roll";
    deploy(&s, p, &web(&name, 1, true));
    let h1 = settled(&s, &agents, p, &name, None);
    // Spread over the three nodes (so the update really crosses them).
    let nodes: BTreeSet<String> = pids(&agents).into_values().map(|(n, _)| n).collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");

    // 1. A good update, one replica at a time.
    let sampler = Sampler::start(&s, &name);
    deploy(&s, p, &web(&name, 2, true));
    let mut seen_rollout = false;
    let h2 = common::wait_for(WAIT, "all four passing on the new hash", || {
        seen_rollout |= schedule(&s, p)["rollouts"]["web"].is_object();
        let now = passing(&s, &name);
        (now.len() == REPLICAS && now.values().all(|h| *h != h1))
            .then(|| now.values().next().unwrap().clone())
    });
    let done = settled(&s, &agents, p, &name, None);
    let samples = sampler.finish();
    assert_eq!(done, h2);
    assert_ne!(h2, h1);
    assert!(seen_rollout, "the schedule carried the rollout");
    assert_three_passing_throughout(&format!("{kind:?}: good update"), &samples, [&h1, &h2]);
    let last = samples.last().unwrap();
    assert_eq!(last.len(), REPLICAS, "{last:?}");
    assert!(last.values().all(|h| *h == h2), "{last:?}");

    // 2. A version whose health check fails, failure_action rollback: back
    //    to h2, never fewer than 3 passing; replicas never advanced keep
    //    their container (same init pid).
    let before = pids(&agents);
    let sampler = Sampler::start(&s, &name);
    deploy(&s, p, &web(&name, 3, false));
    let mut h3 = None;
    common::wait_for(WAIT, "the rollout rolled back", || {
        let sched = schedule(&s, p);
        if h3.is_none() {
            h3 = sched["rollouts"]["web"]["to"].as_str().map(str::to_string);
        }
        (sched["rollouts"]["web"]["phase"] == "rolled-back").then_some(())
    });
    let back = settled(&s, &agents, p, &name, Some("rolled-back"));
    let samples = sampler.finish();
    assert_eq!(back, h2, "the service returned to the old version");
    let h3 = h3.expect("the schedule named the new hash while rolling");
    assert_ne!(h3, h2);
    // The failing version never passed, so only h2 was ever passing.
    assert_three_passing_throughout(&format!("{kind:?}: failing update"), &samples, [&h2, &h2]);
    let last = samples.last().unwrap();
    assert_eq!(last.len(), REPLICAS, "{last:?}");
    assert!(last.values().all(|h| *h == h2), "{last:?}");
    let after = pids(&agents);
    let restarted: Vec<&String> = before
        .iter()
        .filter(|(id, v)| after.get(*id) != Some(v))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "only the replica that was advanced is replaced: {before:?} → {after:?}"
    );

    let out = s.cntnr(s.tmp.path(), &["rm", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "containers removed and entries gone", || {
        let none_left = agents.iter().all(|a| a.runc_list().is_empty());
        let entries = match kind {
            Kind::Consul => consul_get(
                &format!("/v1/health/service/{name}"),
                Duration::from_secs(10),
            )
            .map(|(_, b)| passing_of(&b).len()),
            _ => Some(etcd_list(&records_dir(&s, &name)).0.len()),
        };
        (none_left && entries == Some(0)).then_some(())
    });
}

#[test]
fn rolling_update_keeps_three_of_four_passing_in_consul_and_rolls_back_a_failing_version() {
    rolling_update_keeps_three_of_four_passing_and_rolls_back_a_failing_version(Kind::Consul);
}

#[test]
fn rolling_update_keeps_three_of_four_passing_in_etcd_and_rolls_back_a_failing_version() {
    rolling_update_keeps_three_of_four_passing_and_rolls_back_a_failing_version(Kind::Etcd);
}

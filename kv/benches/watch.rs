//! Watch benchmark: put→event latency through cntnr-kv against a raw client
//! of the same server, and what an idle watch costs the server.
//!
//! Run: `cargo bench -p cntnr-kv --bench watch`. Starts its own etcd and
//! Consul through the cntnr-e2e harness; all traffic stays on loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cntnr_e2e::{Consul, Etcd};
use cntnr_kv::{ConnectOptions, DynStore, StoreUrl, WatchFrom};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const N: usize = 300;
const IDLE: Duration = Duration::from_secs(12);
const CONSUL_WAIT: Duration = Duration::from_secs(3);

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Some(Duration::from_secs(20)),
        consul_wait: CONSUL_WAIT,
        ..Default::default()
    }
}

async fn open(url: &str) -> DynStore {
    cntnr_kv::connect(&StoreUrl::parse(url).unwrap(), &opts())
        .await
        .unwrap()
}

/// put→event latency through our layer: each put waits for its own event.
async fn ours(store: DynStore, writer: DynStore, prefix: &str) -> Stats {
    let mut w = store.watch(prefix, WatchFrom::Start);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let key = format!("{prefix}k{i}");
        let t0 = Instant::now();
        writer.put(&key, b"v").await.unwrap();
        loop {
            let ev = w.next().await.unwrap().unwrap();
            if ev.key == key {
                break;
            }
        }
        lat.push(t0.elapsed());
    }
    stats(lat)
}

/// Raw etcd: etcd-client's watch stream, no state machine.
async fn raw_etcd(endpoint: &str, prefix: &str) -> Stats {
    let client = etcd_client::Client::connect([format!("http://{endpoint}")], None)
        .await
        .unwrap();
    let mut wc = client.watch_client();
    let mut kv = client.kv_client();
    let mut stream = wc
        .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let _created = stream.message().await.unwrap();
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let key = format!("{prefix}k{i}");
        let t0 = Instant::now();
        kv.put(key.as_str(), "v", None).await.unwrap();
        'wait: loop {
            let msg = stream.message().await.unwrap().unwrap();
            for ev in msg.events() {
                if ev.kv().map(|kv| kv.key()) == Some(key.as_bytes()) {
                    break 'wait;
                }
            }
        }
        lat.push(t0.elapsed());
    }
    stats(lat)
}

/// Raw Consul: a bare blocking-query loop (GET ?recurse&index&wait) that
/// reports each new X-Consul-Index; the put is seen when the index reaches
/// the put's index.
async fn raw_consul(base: &str, prefix: &str) -> Stats {
    let http = reqwest::Client::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let url = format!("{base}/v1/kv/{prefix}");
    let h = http.clone();
    let poller = tokio::spawn(async move {
        let mut index = 1u64;
        loop {
            let r = h
                .get(&url)
                .query(&[
                    ("recurse", "true"),
                    ("index", &index.to_string()),
                    ("wait", "3s"),
                ])
                .send()
                .await
                .unwrap();
            let i: u64 = r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let _ = r.bytes().await;
            if i != index {
                index = i;
                if tx.send(i).is_err() {
                    return;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let key = format!("{prefix}k{i}");
        let t0 = Instant::now();
        let r = http
            .put(format!("{base}/v1/txn"))
            .json(&serde_json::json!([{"KV": {"Verb": "set", "Key": key, "Value": "dg=="}}]))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        let idx = v["Results"][0]["KV"]["ModifyIndex"].as_u64().unwrap();
        while rx.recv().await.unwrap() < idx {}
        lat.push(t0.elapsed());
    }
    poller.abort();
    stats(lat)
}

/// Raw dir: inotify (notify crate) on the directory, no scan or diff.
async fn raw_dir(root: &std::path::Path) -> Stats {
    use notify::Watcher;
    let dir = root.join("rawdir");
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<std::path::PathBuf>();
    let mut watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        if let Ok(ev) = r {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })
    .unwrap();
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .unwrap();
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let path = dir.join(format!("k{i}"));
        let t0 = Instant::now();
        // Same durable write as the store does, so only the watch differs.
        let tmp = dir.join(format!(".k{i}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(b"v").unwrap();
            f.sync_all().unwrap();
        }
        std::fs::rename(&tmp, &path).unwrap();
        std::fs::File::open(&dir).unwrap().sync_all().unwrap();
        while rx.recv().await.unwrap() != path {}
        lat.push(t0.elapsed());
    }
    stats(lat)
}

/// A loopback TCP proxy that counts HTTP/1.1 requests sent through it.
async fn counting_proxy(upstream: String) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = l.accept().await.unwrap();
            let up = upstream.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&up).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up_dir = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let reqs = text.matches(" HTTP/1.1\r\n").count() as u64;
                        c.fetch_add(reqs, Ordering::SeqCst);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! { _ = up_dir => {}, _ = down => {} }
            });
        }
    });
    (addr, count)
}

/// Sum of gRPC messages etcd received, from its /metrics.
async fn etcd_grpc_msgs(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; there is nothing to filter.
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let consul = tokio::task::spawn_blocking(Consul::start_dev)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    println!("put→watch-event latency, {N} sequential puts each awaited (ms)");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12}",
        "backend", "ours p50", "ours p99", "raw p50", "raw p99"
    );

    let es = open(&etcd.store_url()).await;
    let o = ours(es.clone(), es.clone(), "bench-ours/").await;
    let r = raw_etcd(&etcd.endpoint(), "bench-raw/").await;
    println!(
        "{:<8} {:>12.3} {:>12.3} {:>12.3} {:>12.3}   (raw: etcd-client watch stream)",
        "etcd", o.p50, o.p99, r.p50, r.p99
    );

    let cs = open(&consul.store_url()).await;
    let o = ours(cs.clone(), cs.clone(), "bench-ours/").await;
    let r = raw_consul(&consul.url(), "bench-raw/").await;
    println!(
        "{:<8} {:>12.3} {:>12.3} {:>12.3} {:>12.3}   (raw: bare reqwest blocking-query loop)",
        "consul", o.p50, o.p99, r.p50, r.p99
    );

    let ds = open(&format!("dir://{}", dir.path().display())).await;
    let o = ours(ds.clone(), ds.clone(), "bench-ours/").await;
    let r = raw_dir(dir.path()).await;
    println!(
        "{:<8} {:>12.3} {:>12.3} {:>12.3} {:>12.3}   (raw: notify/inotify on the directory)",
        "dir", o.p50, o.p99, r.p50, r.p99
    );

    println!();
    println!("idle watch cost over {IDLE:?} (one watch on a quiet prefix)");
    // etcd: gRPC messages the server received while our watch idled.
    let before = etcd_grpc_msgs(&etcd.url()).await;
    let mut w = es.watch("idle/", WatchFrom::Start);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = etcd_grpc_msgs(&etcd.url()).await;
    tokio::time::sleep(IDLE).await;
    let end = etcd_grpc_msgs(&etcd.url()).await;
    let _ = (before, futures::FutureExt::now_or_never(w.next()));
    drop(w);
    println!(
        "etcd     {:.3} gRPC messages/s while idle (target 0; HTTP/2 keepalive pings are not requests)",
        (end - start) as f64 / IDLE.as_secs_f64()
    );

    // Consul: HTTP requests through a counting proxy.
    let (proxy, count) = counting_proxy(consul.http_addr()).await;
    let ps = open(&format!("consul://{proxy}")).await;
    let mut w = ps.watch("idle/", WatchFrom::Start);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = count.load(Ordering::SeqCst);
    tokio::time::sleep(IDLE).await;
    let c1 = count.load(Ordering::SeqCst);
    let _ = futures::FutureExt::now_or_never(w.next());
    let per_s = (c1 - c0) as f64 / IDLE.as_secs_f64();
    println!(
        "consul   {:.3} requests/s while idle = {:.2} per {:?} wait period (target ≤ 1)",
        per_s,
        per_s * CONSUL_WAIT.as_secs_f64(),
        CONSUL_WAIT
    );
}

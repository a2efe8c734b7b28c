//! The etcd location registry at scale, simulated (issue 15): a real etcd
//! (Debian's `etcd-server`) in a test namespace is filled with 1,000
//! routers (a lease each) and 100,000 GIDs (100 per router, written with
//! the routers' own put-if-absent transaction), then the benchmark
//! measures, against it:
//!
//! - the sync of one more router's cache (the router's own
//!   `EtcdRegistry`, its registry thread and all): time, heap, CPU;
//! - lookups: in the cache (what the RTR path does) and one etcd range
//!   read (what a lookup without the cache would cost);
//! - watch fan-out: 1,000 watchers of `/flowverbs/gids/` (one per
//!   simulated router, 50 connections) and the delay from a GID's
//!   registration to each watcher seeing it;
//! - the cache under churn: CPU of the registry thread and of the data
//!   path's `poll` per change.
//!
//! Not part of the normal run (`#[ignore]`): `bash
//! perftest-harness/etcd-scale.sh` runs it and prints the table (README,
//! "Clusters"). Sizes: FV_SCALE_ROUTERS, FV_SCALE_GIDS, FV_SCALE_WATCHERS.
//! Prints figures; asserts only that every registration, lookup and
//! event arrived (never a timing).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::topology::{in_netns, Star};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use flowverbs_router::etcd::{
    gid_key, gid_value, router_key, router_value, EtcdConfig, EtcdRegistry, GIDS,
};
use flowverbs_router::registry::LocationRegistry;

/// Live heap bytes of the process (allocations minus frees).
struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// When one watcher saw each key.
type Seen = HashMap<Vec<u8>, Instant>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process's threads named `comm`.
fn thread_cpu(comm: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(t) = t else { continue };
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some((name, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !name.ends_with(&format!("({comm}")) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total as f64 / tick
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn router_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 200, (i / 250) as u8, (i % 250) as u8 + 1], 4791))
}

fn gid(i: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[10] = 0xff;
    g[11] = 0xff;
    g[12..].copy_from_slice(&(0x0a00_0000u32 + i as u32).to_be_bytes());
    g
}

/// Registers `routers` routers and `gids` GIDs (spread evenly), `par`
/// requests in flight.
async fn populate(c: &Client, routers: usize, gids: usize, par: usize) {
    let mut set = tokio::task::JoinSet::new();
    let per = gids.div_ceil(routers);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..par {
        let mut c = c.clone();
        let next = next.clone();
        set.spawn(async move {
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= routers {
                    return;
                }
                let lease = c.lease_grant(600, None).await.expect("lease").id();
                let boot = r as u64 + 1;
                let addr = router_addr(r);
                c.put(
                    router_key(addr),
                    router_value(boot),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .expect("router put");
                for g in r * per..((r + 1) * per).min(gids) {
                    let key = gid_key(&gid(g));
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key,
                            gid_value(addr, boot),
                            Some(PutOptions::new().with_lease(lease)),
                        )]);
                    assert!(c.txn(txn).await.expect("gid txn").succeeded());
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a populating task");
    }
}

#[test]
#[ignore = "benchmark: bash perftest-harness/etcd-scale.sh"]
fn etcd_registry_at_scale() {
    let routers = env("FV_SCALE_ROUTERS", 1000);
    let gids = env("FV_SCALE_GIDS", 100_000);
    let watchers = env("FV_SCALE_WATCHERS", 1000);
    let star = Star::new(75, 1);
    let etcd = Etcd::start_in(&star.switch.netns, &star.switch.addr);
    let endpoint = etcd.endpoint();
    let ns = star.switch.netns.clone();
    let report = in_netns(&ns, move || bench(&endpoint, routers, gids, watchers));
    println!("{report}");
    drop(etcd);
}

fn bench(endpoint: &str, routers: usize, gids: usize, watchers: usize) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{endpoint}");
    let mut rows: Vec<(String, String)> = Vec::new();
    let c = rt.block_on(Client::connect([url.as_str()], None)).unwrap();

    // 1. Fill etcd.
    let t = Instant::now();
    rt.block_on(populate(&c, routers, gids, 64));
    let fill = t.elapsed();
    rows.push((
        format!("register {routers} routers + {gids} GIDs (64 in flight)"),
        format!(
            "{:.1} s ({:.0} GID transactions/s)",
            fill.as_secs_f64(),
            gids as f64 / fill.as_secs_f64()
        ),
    ));

    // 2. One more router's cache: the router's own registry code.
    let me: SocketAddr = "10.250.0.1:4791".parse().unwrap();
    let heap0 = LIVE.load(Ordering::Relaxed);
    let cpu0 = thread_cpu("fv-etcd");
    let t = Instant::now();
    let config = EtcdConfig::parse(&format!("etcd://{endpoint}"), 10).unwrap();
    let mut reg = EtcdRegistry::start(config, me, 42).unwrap();
    let mut poll_time = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(120);
    while reg.cache_len() != (routers + 1, gids) {
        assert!(
            Instant::now() < deadline,
            "the cache did not fill in 120 s: {:?}",
            reg.cache_len()
        );
        std::thread::sleep(Duration::from_millis(1));
        let p = Instant::now();
        reg.poll();
        poll_time += p.elapsed();
    }
    let sync = t.elapsed();
    let heap = LIVE.load(Ordering::Relaxed) - heap0;
    let sync_cpu = thread_cpu("fv-etcd") - cpu0;
    rows.push((
        "a router's cache: sync (snapshot of everything)".into(),
        format!(
            "{:.2} s; registry thread CPU {:.2} s, data path (apply) {:.0} ms",
            sync.as_secs_f64(),
            sync_cpu,
            poll_time.as_secs_f64() * 1e3
        ),
    ));
    rows.push((
        "a router's cache: heap held (cache + registry thread)".into(),
        format!(
            "{:.1} MiB ({:.0} bytes per GID)",
            heap as f64 / (1 << 20) as f64,
            heap as f64 / gids as f64
        ),
    ));

    // 3. Lookups: the cache, and one etcd range read per lookup.
    let n = 1_000_000;
    let t = Instant::now();
    let mut found = 0;
    for i in 0..n {
        found += reg.locate(&gid((i * 7919) % gids)).is_some() as usize;
    }
    let per = t.elapsed() / n as u32;
    assert_eq!(found, n);
    rows.push((
        "lookup in the cache (data-path thread, RTR)".into(),
        format!("{} ns", per.as_nanos()),
    ));
    let mut lat = Vec::new();
    let mut kv = c.clone();
    for i in 0..2000 {
        let t = Instant::now();
        let r = rt
            .block_on(kv.get(gid_key(&gid((i * 7919) % gids)), None))
            .unwrap();
        lat.push(t.elapsed());
        assert_eq!(r.kvs().len(), 1);
    }
    lat.sort();
    rows.push((
        "lookup by an etcd range read (no cache), 2000 sequential".into(),
        format!(
            "p50 {}, p99 {}, max {}",
            us(pct(&lat, 0.5)),
            us(pct(&lat, 0.99)),
            us(*lat.last().unwrap())
        ),
    ));

    // 4. Watch fan-out: `watchers` watch streams over 50 connections.
    let conns = 50.min(watchers).max(1);
    let changes = 200usize;
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> =
        Arc::new(std::sync::Mutex::new(vec![HashMap::new(); watchers]));
    let clients: Vec<Client> = (0..conns)
        .map(|_| rt.block_on(Client::connect([url.as_str()], None)).unwrap())
        .collect();
    let mut tasks = Vec::new();
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..watchers {
        let mut c = clients[w % conns].clone();
        let seen = seen.clone();
        let ready = ready.clone();
        tasks.push(rt.spawn(async move {
            let mut s = c
                .watch(GIDS, Some(WatchOptions::new().with_prefix()))
                .await
                .unwrap();
            ready.fetch_add(1, Ordering::SeqCst);
            let mut got = 0;
            while got < changes {
                let Ok(Some(resp)) = s.message().await else {
                    return;
                };
                let now = Instant::now();
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        if kv
                            .key()
                            .starts_with(b"/flowverbs/gids/00000000000000000000ffff0b")
                        {
                            seen.lock().unwrap()[w].insert(kv.key().to_vec(), now);
                            got += 1;
                        }
                    }
                }
            }
        }));
    }
    rt.block_on(async {
        while ready.load(Ordering::SeqCst) < watchers {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let cpu0 = thread_cpu("fv-etcd");
    let mut poll_time = Duration::ZERO;
    let applied0 = reg.applied;
    let mut sent = Vec::new();
    let mut w = c.clone();
    let t_churn = Instant::now();
    for i in 0..changes {
        // A new GID (range 11.0.0.0) registered as a router would.
        let mut g = gid(i);
        g[12] = 11;
        let key = gid_key(&g);
        let t = Instant::now();
        rt.block_on(w.put(key.clone(), gid_value(router_addr(i % routers), 1), None))
            .unwrap();
        sent.push((key.into_bytes(), t));
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        let p = Instant::now();
        reg.poll();
        poll_time += p.elapsed();
    }
    let churn_time = t_churn.elapsed();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        for t in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, t).await;
        }
    });
    let mut delays = Vec::new();
    let mut last = Vec::new();
    let seen = seen.lock().unwrap();
    for (key, t0) in &sent {
        let mut worst = Duration::ZERO;
        for s in seen.iter() {
            let at = s
                .get(key)
                .unwrap_or_else(|| panic!("a watcher missed a change"));
            let d = at.saturating_duration_since(*t0);
            delays.push(d);
            worst = worst.max(d);
        }
        last.push(worst);
    }
    delays.sort();
    last.sort();
    rows.push((
        format!(
            "watch fan-out: {changes} registrations, {watchers} watchers on {conns} connections"
        ),
        format!(
            "each watcher: p50 {}, p99 {}; the last of {watchers}: p50 {}, p99 {}",
            us(pct(&delays, 0.5)),
            us(pct(&delays, 0.99)),
            us(pct(&last, 0.5)),
            us(pct(&last, 0.99))
        ),
    ));

    // 5. The router's cache under that churn.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reg.applied - applied0 < changes as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let p = Instant::now();
        reg.poll();
        poll_time += p.elapsed();
    }
    assert_eq!(
        reg.applied - applied0,
        changes as u64,
        "the cache missed changes"
    );
    let cpu = thread_cpu("fv-etcd") - cpu0;
    rows.push((
        format!(
            "a router's cache under churn ({changes} changes in {:.1} s)",
            churn_time.as_secs_f64()
        ),
        format!(
            "registry thread {:.0} µs CPU per change (10 ms clock ticks: coarse), data path {:.1} µs per change",
            cpu * 1e6 / changes as f64,
            poll_time.as_secs_f64() * 1e6 / changes as f64
        ),
    ));
    drop(reg);

    let mut out = String::from("| what | figure |\n| --- | --- |\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}

//! A real etcd (Debian's `etcd-server`) for a test: started inside one of
//! the test's network namespaces on a port of its own, with a fresh data
//! directory; stopped (SIGKILL) and removed on drop. [`Etcd::stop`] and
//! [`Etcd::start`] take it away and bring it back (same data) mid-test.

use super::*;

pub struct Etcd {
    pub netns: String,
    pub addr: String,
    pub port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd in `netns`, serving clients on `addr`:(a free port),
    /// and waits until it answers.
    pub fn start_in(netns: &str, addr: &str) -> Etcd {
        let base = fresh_temp_dir("etcd");
        let mut e = Etcd {
            netns: netns.to_string(),
            addr: addr.to_string(),
            port: free_port(),
            peer_port: free_port(),
            data_dir: base.join("data"),
            log: base.join("etcd.log"),
            child: None,
        };
        e.start();
        e
    }

    /// `HOST:PORT` of its client endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// `etcd://HOST:PORT`, for `flowverbs router --registry`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// (Re)starts it on the same port and data, and waits until it is
    /// healthy (panics with its log after 30 s).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd runs already");
        let client = format!("http://{}", self.endpoint());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap()
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcd", "--name", "fvtest"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("fvtest={peer}")])
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("spawning etcd (Debian's etcd-server: scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "etcd did not become healthy ({exited:?}):\n{}\n--- etcd log:\n{}",
                    show("etcdctl endpoint health", &out),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `etcdctl --endpoints http://HOST:PORT ARGS` inside its namespace.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "etcdctl", "--endpoints"])
            .arg(format!("http://{}", self.endpoint()))
            .args(["--command-timeout", "5s"])
            .args(args)
            .env("ETCDCTL_API", "3");
        run_with_timeout(cmd, 30)
    }

    /// Every key under `prefix` and its value, as etcd has them now.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        assert!(out.status.success(), "{}", show("etcdctl get", &out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }

    /// etcd's revision: it grows by one with every write (put or delete).
    pub fn revision(&self) -> u64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            show("etcdctl endpoint status", &out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl's JSON");
        v[0]["Status"]["header"]["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_prefix(key)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Waits until `cond` holds for what etcd has under `prefix`; panics
    /// with `what` and the keys after `timeout`.
    pub fn wait_for(
        &self,
        prefix: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[(String, String)]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let kvs = self.get_prefix(prefix);
            if cond(&kvs) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd: {what} did not happen within {timeout:?}; under {prefix}: {kvs:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd key of the GID `::ffff:<ipv4>`.
pub fn gid_key_of(ipv4: &str) -> String {
    let ip: std::net::Ipv4Addr = ipv4.parse().expect("an IPv4 address");
    let o = ip.octets();
    format!(
        "/flowverbs/gids/00000000000000000000ffff{:02x}{:02x}{:02x}{:02x}",
        o[0], o[1], o[2], o[3]
    )
}

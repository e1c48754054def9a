//! Two hosts on one machine: two network namespaces of the caller's own,
//! joined by a veth pair with private addresses, each egress shaped by
//! `tc … tbf` when asked (netem is not available on this kernel class).
//! Everything it creates it removes on drop (deleting a namespace removes
//! its end of the veth, and so the pair). Used by tests/link.rs, the
//! cluster harness (one node per namespace) and perf/.

use std::process::Command;

/// The two namespaces, their veth ends and addresses.
#[derive(Debug)]
pub struct Rig {
    pub ns: [String; 2],
    pub dev: [String; 2],
    pub addr: [String; 2],
    /// A second link between the same namespaces, if added ([`Rig::add_link`]).
    pub second: Option<Link>,
}

/// One veth pair's ends and addresses.
#[derive(Debug, Clone)]
pub struct Link {
    pub dev: [String; 2],
    pub addr: [String; 2],
}

/// Why a rig cannot be built here (not root, no iproute2), if it cannot.
pub fn unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let have = |tool: &str| Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
    (!(root && have("ip") && have("tc"))).then(|| "needs root and iproute2 (ip, tc) to build two network namespaces".to_string())
}

/// Runs `ip` with `args`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Rig {
    /// Namespaces `sluice-<tag>a-<pid>` and `…b-<pid>` with
    /// `10.<net>.0.1` and `10.<net>.0.2` on the veth pair, loopback up in
    /// both. `tag` keeps concurrent rigs of one process apart.
    pub fn new(tag: &str, net: u8) -> Self {
        let id = std::process::id();
        let ns = [format!("sluice-{tag}a-{id}"), format!("sluice-{tag}b-{id}")];
        let first = Link::named(&format!("s{tag}"), net);
        // Built before anything exists, so a failure half-way is removed too.
        let rig = Self { ns, dev: first.dev.clone(), addr: first.addr.clone(), second: None };
        for n in &rig.ns {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        rig.connect(&first);
        rig
    }

    /// A second veth pair between the two namespaces, on `10.<net>.0.0/24`
    /// (say, a separate path for the SST, so that taking it down leaves the
    /// cluster's own traffic alone).
    pub fn add_link(&mut self, tag: &str, net: u8) -> Link {
        let link = Link::named(&format!("s{tag}"), net);
        self.connect(&link);
        self.second = Some(link.clone());
        link
    }

    fn connect(&self, link: &Link) {
        ip(&["link", "add", &link.dev[0], "type", "veth", "peer", "name", &link.dev[1]]);
        for i in 0..2 {
            ip(&["link", "set", &link.dev[i], "netns", &self.ns[i]]);
            ip(&["-n", &self.ns[i], "addr", "add", &format!("{}/24", link.addr[i]), "dev", &link.dev[i]]);
            ip(&["-n", &self.ns[i], "link", "set", &link.dev[i], "up"]);
        }
    }

    /// Every link's ends, side by side.
    fn links(&self) -> Vec<Link> {
        std::iter::once(Link { dev: self.dev.clone(), addr: self.addr.clone() }).chain(self.second.clone()).collect()
    }

    /// Shapes both egresses of every link to `rate` (tc syntax: `1gbit`,
    /// `100mbit`).
    pub fn shape(&self, rate: &str) {
        for link in self.links() {
            for i in 0..2 {
                let tc = Command::new("tc")
                    .args(["-n", &self.ns[i], "qdisc", "replace", "dev", &link.dev[i], "root", "tbf", "rate", rate])
                    .args(["burst", "256kb", "latency", "50ms"])
                    .status()
                    .expect("tc");
                assert!(tc.success(), "tc tbf {rate} on {}", link.dev[i]);
            }
        }
    }

    /// Sets the TCP congestion control of both namespaces (`bbr`, `cubic`).
    pub fn congestion_control(&self, cc: &str) {
        for side in 0..2 {
            let ok = self.exec(side, "sysctl").args(["-q", "-w", &format!("net.ipv4.tcp_congestion_control={cc}")]).status();
            assert!(ok.is_ok_and(|s| s.success()), "sysctl tcp_congestion_control={cc} in {}", self.ns[side]);
        }
    }

    /// A command that runs `program` inside side `side`'s namespace (`ip
    /// netns exec` execs it: the child's pid is the program's).
    pub fn exec(&self, side: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[side], program]);
        c
    }

    /// Bytes sent so far from side `i` over its veth ends (every link).
    pub fn tx_bytes(&self, i: usize) -> u64 {
        let read = |dev: &str| {
            let out = self.exec(i, "cat").arg(format!("/sys/class/net/{dev}/statistics/tx_bytes")).output();
            out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok()).unwrap_or(0)
        };
        self.links().iter().map(|l| read(&l.dev[i])).sum()
    }
}

impl Link {
    /// Devices `<prefix>a<pid>`/`<prefix>b<pid>` (at most 15 bytes) with
    /// `10.<net>.0.1` and `10.<net>.0.2`.
    fn named(prefix: &str, net: u8) -> Self {
        let id = std::process::id();
        let dev = [format!("{prefix}a{id}"), format!("{prefix}b{id}")].map(|d| d[..d.len().min(15)].to_string());
        Self { dev, addr: [format!("10.{net}.0.1"), format!("10.{net}.0.2")] }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

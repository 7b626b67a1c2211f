//! A real network path to a source: a network namespace of the test's own, joined to this one by
//! a veth pair, on which the kernel adds latency, loss or a partition. Latency is `tc netem`
//! where the kernel has it and otherwise NFQUEUE (each packet held in the kernel's queue until a
//! thread here lets it go); loss and partitions are iptables rules in the namespace. Why, and
//! what each fault looks like to the gateway: `docs/network-faults.md`.
//!
//! Names carry this process's id, so runs side by side never meet; everything is removed when
//! the [`NetPath`] is dropped (a panicking test included), and a killed run's leftovers by the
//! next run.

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When set (as `scripts/test` sets it), a machine without network namespaces fails the
/// network-fault tests instead of skipping them.
pub const REQUIRE_ENV: &str = "SAMBLIK_REQUIRE_NETNS";

/// Every namespace made here is named `samblik-nf-PID-N`.
const PREFIX: &str = "samblik-nf-";

/// The NFQUEUE queue number; queues belong to their namespace, so each path has its own 0.
const QUEUE: u16 = 0;

/// RFC 2544's block for network test equipment (198.18.0.0/15), cut into /30 links: no real
/// network uses it, and the free link is checked before it is taken.
const TEST_NET: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const LINKS: u32 = 1 << 15;

/// How latency is put on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// `tc qdisc … netem delay` on both ends of the veth pair.
    Netem,
    /// iptables `NFQUEUE` on the namespace's side, both directions: the kernel holds each packet
    /// until this process gives its verdict, the delay after it arrived.
    Nfqueue,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Latency::Netem => "tc netem",
            Latency::Nfqueue => "NFQUEUE (this kernel has no sch_netem)",
        })
    }
}

/// A namespace reached from this one over a veth pair; removed on drop.
#[derive(Debug)]
pub struct NetPath {
    namespace: String,
    /// The veth end in this (the gateway's) namespace, and the one in the source's.
    host_link: String,
    ns_link: String,
    /// This side's address on the link.
    pub host_addr: Ipv4Addr,
    /// The namespace's address on the link: where a source in it listens.
    pub addr: Ipv4Addr,
    latency: Option<Latency>,
    delayer: Option<Delayer>,
}

/// A fresh path for `test`, or `None` after a SKIP line where this machine cannot make one (not
/// root, no `ip netns`, no iptables) — unless [`REQUIRE_ENV`] is set, when that fails the test.
pub fn path_or_skip(test: &str) -> Option<NetPath> {
    match NetPath::create() {
        Ok(path) => Some(path),
        Err(why) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{test}: {REQUIRE_ENV} is set but no network namespace could be made: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIP {test}: no network namespace could be made here ({why}); \
                 with {REQUIRE_ENV} set this is a failure"
            );
            None
        }
    }
}

impl NetPath {
    /// Makes the namespace and the veth pair, addresses both ends and checks that iptables works
    /// in the namespace; the reason it could not.
    pub fn create() -> Result<NetPath, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(remove_leftovers);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names have at most 15 characters: "snf", the pid and n in hex, and a side.
        let tag = format!("snf{pid:x}x{n:x}");
        let namespace = format!("{PREFIX}{pid}-{n}");
        run("ip", &["netns", "add", &namespace]).map_err(|e| format!("`ip netns add`: {e}"))?;
        let mut path = NetPath {
            namespace,
            host_link: format!("{tag}h"),
            ns_link: format!("{tag}s"),
            host_addr: Ipv4Addr::UNSPECIFIED,
            addr: Ipv4Addr::UNSPECIFIED,
            latency: None,
            delayer: None,
        };
        // From here on a failure leaves nothing behind: dropping `path` removes what exists.
        path.wire(pid, n)?;
        Ok(path)
    }

    fn wire(&mut self, pid: u32, n: u32) -> Result<(), String> {
        let (ns, host, peer) = (&self.namespace, &self.host_link, &self.ns_link);
        run(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns,
            ],
        )?;
        let link = free_link(pid.wrapping_mul(64).wrapping_add(n))?;
        self.host_addr = Ipv4Addr::from(link + 1);
        self.addr = Ipv4Addr::from(link + 2);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", self.host_addr),
                "dev",
                host,
            ],
        )?;
        run("ip", &["link", "set", host, "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", self.addr),
                "dev",
                peer,
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", peer, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        self.iptables(&["-L", "-n"])
            .map_err(|e| format!("iptables in the namespace: {e}"))?;
        Ok(())
    }

    /// A TCP listener on the namespace's address (any port): a server on it is reached only
    /// over the veth pair.
    pub fn listen(&self) -> io::Result<tokio::net::TcpListener> {
        let addr = self.addr;
        let listener = self.enter(move || std::net::TcpListener::bind((addr, 0)))?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// Runs `work` on a thread of its own that has entered the namespace. A socket belongs to the
    /// namespace it was made in, wherever it is used later; no other thread changes namespace.
    fn enter<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let namespace = std::fs::File::open(format!("/run/netns/{}", self.namespace))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    work()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked in the namespace")))
        })
    }

    /// Delays every packet by `one_way` in each direction (a round trip gains twice that); may be
    /// raised while traffic flows. Says how.
    pub fn delay(&mut self, one_way: Duration) -> Result<Latency, String> {
        let ms = format!("{}ms", one_way.as_millis());
        if let Some(delayer) = &self.delayer {
            delayer.set(one_way);
            eprintln!(
                "{}: latency {ms} each way by {}",
                self.namespace,
                Latency::Nfqueue
            );
            return Ok(Latency::Nfqueue);
        }
        let netem = |netns: &[&str], link: &str| {
            let mut args = netns.to_vec();
            args.extend([
                "tc", "qdisc", "replace", "dev", link, "root", "netem", "delay", &ms,
            ]);
            run(args[0], &args[1..])
        };
        let in_ns = ["ip", "netns", "exec", self.namespace.as_str()];
        if self.latency != Some(Latency::Nfqueue) && netem(&in_ns, &self.ns_link).is_ok() {
            netem(&[], &self.host_link)?;
            self.latency = Some(Latency::Netem);
            eprintln!("{}: latency {ms} each way by tc netem", self.namespace);
            return Ok(Latency::Netem);
        }
        // No netem: hold the packets in NFQUEUE. The queue is bound before any rule sends a
        // packet to it, which would otherwise be dropped.
        let delayer = self
            .enter(|| Delayer::bind(one_way))
            .map_err(|e| format!("NFQUEUE in the namespace: {e}"))?
            .start()
            .map_err(|e| format!("NFQUEUE thread: {e}"))?;
        self.delayer = Some(delayer);
        let queue = QUEUE.to_string();
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let rule = [
                chain,
                dir,
                &self.ns_link,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
            ];
            self.iptables(&[&["-A"], &rule[..]].concat())?;
        }
        self.latency = Some(Latency::Nfqueue);
        eprintln!(
            "{}: latency {ms} each way by {}",
            self.namespace,
            Latency::Nfqueue
        );
        Ok(Latency::Nfqueue)
    }

    /// Drops `percent` % of the packets in each direction, at random.
    pub fn lose(&self, percent: u32) -> Result<(), String> {
        let p = format!("{:.2}", f64::from(percent.min(100)) / 100.0);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            self.iptables(&[
                "-I",
                chain,
                dir,
                &self.ns_link,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        eprintln!(
            "{}: {percent} % packet loss each way by iptables",
            self.namespace
        );
        Ok(())
    }

    /// Cuts the path: every packet either way is dropped without a word (no RST, no ICMP), as
    /// a broken link or a firewall that drops does.
    pub fn partition(&self) -> Result<(), String> {
        for rule in self.partition_rules() {
            self.iptables(&[&["-I"], &rule[..]].concat())?;
        }
        eprintln!("{}: partitioned by iptables DROP", self.namespace);
        Ok(())
    }

    /// Ends a [`partition`](Self::partition).
    pub fn heal(&self) -> Result<(), String> {
        for rule in self.partition_rules() {
            self.iptables(&[&["-D"], &rule[..]].concat())?;
        }
        eprintln!("{}: partition healed", self.namespace);
        Ok(())
    }

    fn partition_rules(&self) -> [[&str; 5]; 2] {
        [
            ["INPUT", "-i", &self.ns_link, "-j", "DROP"],
            ["OUTPUT", "-o", &self.ns_link, "-j", "DROP"],
        ]
    }

    /// Packets the namespace's DROP rules (loss and partition) have dropped so far.
    pub fn dropped(&self) -> Result<u64, String> {
        let mut dropped = 0;
        for chain in ["INPUT", "OUTPUT"] {
            let listing = self.iptables(&["-L", chain, "-v", "-x", "-n"])?;
            // Rows: pkts bytes target prot opt in out source destination [match...].
            for row in listing.lines().skip(2) {
                let fields: Vec<&str> = row.split_whitespace().collect();
                if fields.get(2) == Some(&"DROP") {
                    dropped += fields[0].parse::<u64>().map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(dropped)
    }

    /// Packets this side of the link has sent and received so far.
    pub fn packets(&self) -> u64 {
        ["tx_packets", "rx_packets"]
            .iter()
            .filter_map(|counter| {
                let file = format!("/sys/class/net/{}/statistics/{counter}", self.host_link);
                std::fs::read_to_string(file)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    fn iptables(&self, args: &[&str]) -> Result<String, String> {
        // -w: the rule tables' lock is shared by every namespace on the machine.
        let mut all = vec!["netns", "exec", self.namespace.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for NetPath {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both, at once, even while a socket still holds
        // the namespace alive.
        let _ = run("ip", &["link", "del", &self.host_link]);
        if let Err(e) = run("ip", &["netns", "del", &self.namespace]) {
            eprintln!("could not remove network namespace {}: {e}", self.namespace);
        }
        // The delayer last: packets it still holds are let go into a namespace that is gone.
        self.delayer.take();
    }
}

/// Removes the namespaces of runs whose process is gone (killed before their drop ran).
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// The first /30 of [`TEST_NET`] from `start` on that no address or route here touches yet.
fn free_link(start: u32) -> Result<u32, String> {
    let taken = format!(
        "{}\n{}",
        run("ip", &["-4", "-o", "addr", "show"])?,
        run("ip", &["-4", "route", "show"])?
    );
    (0..LINKS)
        .map(|i| TEST_NET + 4 * ((start.wrapping_add(i)) % LINKS))
        .find(|&link| {
            (0..4).all(|k| {
                let addr = Ipv4Addr::from(link + k).to_string();
                !taken
                    .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .any(|word| word == addr)
            })
        })
        .ok_or_else(|| "no free link in 198.18.0.0/15".to_owned())
}

/// Runs `program` with `args`; its standard output, or what went wrong.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Holds every packet NFQUEUE gives it for the delay, then lets it go, in the order it came.
struct Delayer {
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    queue: Option<nfq::Queue>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Delayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayer")
            .field("delay_us", &self.delay_us)
            .finish_non_exhaustive()
    }
}

/// How often the holding thread looks for packets when none is due sooner (nfq's socket offers
/// no way to wait with a time-out).
const TICK: Duration = Duration::from_millis(1);

impl Delayer {
    /// Binds queue [`QUEUE`] in the calling thread's namespace (only the packets' metadata is
    /// copied out: nothing here reads them).
    fn bind(delay: Duration) -> io::Result<Delayer> {
        let mut queue = nfq::Queue::open()?;
        queue.bind(QUEUE)?;
        queue.set_copy_range(QUEUE, 0)?;
        queue.set_queue_max_len(QUEUE, 16 * 1024)?;
        queue.set_nonblocking(true);
        Ok(Delayer {
            delay_us: Arc::new(AtomicU64::new(micros(delay))),
            stop: Arc::new(AtomicBool::new(false)),
            queue: Some(queue),
            thread: None,
        })
    }

    fn start(mut self) -> io::Result<Delayer> {
        let queue = self
            .queue
            .take()
            .ok_or_else(|| io::Error::other("started"))?;
        let (delay, stop) = (Arc::clone(&self.delay_us), Arc::clone(&self.stop));
        self.thread = Some(
            std::thread::Builder::new()
                .name("nfqueue-delay".into())
                .spawn(move || hold(queue, &delay, &stop))?,
        );
        Ok(self)
    }

    fn set(&self, delay: Duration) {
        self.delay_us.store(micros(delay), Ordering::SeqCst);
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn hold(mut queue: nfq::Queue, delay: &AtomicU64, stop: &AtomicBool) {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    // A packet is never let go before one that came earlier, even when the delay was raised in
    // between: a path delays, it does not reorder.
    let mut last_due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        loop {
            match queue.recv() {
                Ok(message) => {
                    let after = Duration::from_micros(delay.load(Ordering::SeqCst));
                    last_due = (Instant::now() + after).max(last_due);
                    held.push_back((last_due, message));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("NFQUEUE delay: receiving failed: {e}");
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, message)) = held.pop_front() {
                accept(&mut queue, message);
            }
        }
        let wait = held.front().map_or(TICK, |(due, _)| {
            due.saturating_duration_since(now).min(TICK)
        });
        std::thread::sleep(wait);
    }
    for (_, message) in held {
        accept(&mut queue, message);
    }
}

fn accept(queue: &mut nfq::Queue, mut message: nfq::Message) {
    message.set_verdict(nfq::Verdict::Accept);
    if let Err(e) = queue.verdict(message) {
        eprintln!("NFQUEUE delay: verdict failed: {e}");
    }
}

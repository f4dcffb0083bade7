//! The observer with a secure UDP listener: lifetime of the per-sender
//! replay state (`docs/protocol.md#replay-protection`, `docs/protocol.md#sender-table`) against the observer's clock and the
//! tracker. Real loopback sockets, fake observer clock.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use varta_core::frame::{Frame, Status};
use varta_core::observer::clock::FakeClock;
use varta_core::observer::ingress::Listener;
use varta_core::observer::udp::{TransportTrust, UdpListener, UdpMode};
use varta_core::observer::{CounterValue, Event, Observer, ObserverConfig};
use varta_core::secure::{
    seal_shared, Key, ReceiverConfig, SecureReceiver, EVICTION_INTERVAL_NS, EVICTION_TTL_NS,
};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

const MS: u64 = 1_000_000;
const KEY: [u8; 32] = [0x5a; 32];

struct Rig {
    obs: Observer,
    clock: FakeClock,
    tx: UdpSocket,
}

fn rig(mut cfg: ObserverConfig) -> Rig {
    cfg.max_beat_rate = 0;
    let clock = FakeClock::new(1_000 * MS);
    let mut obs = Observer::new(cfg.clone(), Box::new(clock.clone())).unwrap();
    let rx = SecureReceiver::new(ReceiverConfig {
        shared_keys: vec![Key::from_bytes(KEY)],
        master_key: None,
        session_restart_gap_ns: cfg.tracker.threshold_ns,
    })
    .unwrap();
    let l = UdpListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        UdpMode::Secure(Box::new(rx)),
        TransportTrust::Untrusted,
        0,
    )
    .unwrap();
    obs.add_listener(Listener::Udp(l));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(obs.udp_local_addr().unwrap()).unwrap();
    Rig { obs, clock, tx }
}

fn wire(pid: u32, iv: [u8; 8], counter: u32, nonce: u64) -> [u8; 60] {
    let f = Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce,
        nonce,
        payload: 0,
    };
    let mut out = [0u8; 60];
    seal_shared(&Key::from_bytes(KEY), &iv, counter, &f.encode(), &mut out);
    out
}

fn counter(obs: &Observer, key: &str) -> u64 {
    match obs.counters().into_iter().find(|(k, _)| *k == key) {
        Some((_, CounterValue::Int(n))) => n,
        other => panic!("no int counter {key}: {other:?}"),
    }
}

impl Rig {
    /// Send one datagram and drain until the observer has taken it off the
    /// socket (the bound only keeps a broken build from hanging).
    fn deliver(&mut self, data: &[u8]) -> Vec<Event> {
        let before = self.obs.ingress_counters().datagrams;
        self.tx.send(data).unwrap();
        let waiter = self.obs.waiter();
        let end = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while self.obs.ingress_counters().datagrams == before {
            assert!(Instant::now() < end, "datagram never arrived");
            waiter.wait(Some(50 * MS)).unwrap();
            self.obs.drain_ready(&mut out);
        }
        out
    }

    /// One wake-up with nothing on the wire (the idle path).
    fn idle_tick(&mut self) -> Vec<Event> {
        let before = self.obs.ingress_counters().datagrams;
        let mut out = Vec::new();
        self.obs.drain_ready(&mut out);
        assert_eq!(self.obs.ingress_counters().datagrams, before, "not idle");
        out
    }
}

fn beats(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Beat { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_observer_sweeps_silent_senders() {
    let mut r = rig(ObserverConfig::new(None, 100 * MS));
    let t0 = r.obs.now_ns();
    assert_eq!(beats(&r.deliver(&wire(4242, [1; 8], 0, 1))), [4242]);
    assert_eq!(r.obs.secure_senders(), Some(1));

    // A sweep is due but the sender has been silent just under the TTL:
    // a live sender is kept.
    r.clock.set(t0 + EVICTION_TTL_NS - 1);
    r.idle_tick();
    assert_eq!(r.obs.secure_senders(), Some(1));

    // The next periodic sweep, still without traffic, forgets it.
    r.clock.set(t0 + EVICTION_TTL_NS - 1 + EVICTION_INTERVAL_NS);
    r.idle_tick();
    assert_eq!(r.obs.secure_senders(), Some(0));
}

fn stalls(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stall(s) => Some(s.pid),
            _ => None,
        })
        .collect()
}

fn removed(obs: &mut Observer) -> Vec<u32> {
    let mut v = Vec::new();
    obs.take_removed(&mut v);
    v.into_iter().map(|a| a.pid).collect()
}

#[test]
fn replay_state_outlives_tracker_eviction() {
    // One tracker slot, strict eviction: a pid is evicted once it is
    // stall-latched and silent for more than 10 x threshold.
    let mut cfg = ObserverConfig::new(None, 100 * MS);
    cfg.tracker.capacity = 1;
    let mut r = rig(cfg);
    let (a, b) = (4242, 4343);
    let captured = [wire(a, [1; 8], 0, 1), wire(a, [1; 8], 1, 2)];
    for w in &captured {
        assert_eq!(beats(&r.deliver(w)), [a]);
    }
    r.clock.advance(2_000 * MS);
    assert_eq!(stalls(&r.idle_tick()), [a]);
    assert_eq!(beats(&r.deliver(&wire(b, [2; 8], 0, 1))), [b]);
    assert_eq!(removed(&mut r.obs), [a]);

    // The evicted pid's captured frames stay refused: forgetting its replay
    // state would make them new-sender frames and re-track a dead agent.
    for w in &captured {
        assert!(beats(&r.deliver(w)).is_empty());
    }
    assert_eq!(counter(&r.obs, "secure_replay_refused"), 2);
    assert_eq!(counter(&r.obs, "tracker_capacity_exceeded"), 0);
    assert!(r.obs.agent(a).is_none());
    assert_eq!(r.obs.secure_senders(), Some(2));

    // A genuine new session of the pid (fresh prefix, nonce restarting at
    // 1) is still accepted after the restart gap and re-tracked.
    r.clock.advance(2_000 * MS);
    assert_eq!(stalls(&r.idle_tick()), [b]);
    assert_eq!(beats(&r.deliver(&wire(a, [3; 8], 0, 1))), [a]);
    assert_eq!(removed(&mut r.obs), [b]);
    assert_eq!(counter(&r.obs, "secure_replay_refused"), 2);
}

#[test]
fn secure_ingress_and_idle_sweeps_do_not_allocate() {
    let mut cfg = ObserverConfig::new(None, 100 * MS);
    cfg.emit_beats = false;
    let mut r = rig(cfg);
    // Queued before measuring: loopback UDP delivers inside send().
    let n: u32 = 64;
    for i in 0..n {
        let pid = 1000 + i % 16;
        r.tx.send(&wire(pid, [7; 8], i, u64::from(i) + 1)).unwrap();
    }
    r.tx.send(&wire(1000, [7; 8], 0, 1)).unwrap(); // a replay
    let mut out = Vec::with_capacity(256);
    let t0 = r.obs.now_ns();
    let allocs = common::count_allocs(|| {
        r.obs.drain_ready(&mut out);
        // Idle wake-ups: stalls, then a sweep that keeps everyone, then one
        // that evicts everyone.
        for t in [
            EVICTION_INTERVAL_NS,
            EVICTION_TTL_NS + 2 * EVICTION_INTERVAL_NS,
        ] {
            r.clock.set(t0 + t);
            r.obs.drain_ready(&mut out);
        }
    });
    // Beats and sweeps allocate nothing; a stall event is boxed (one
    // allocation per silence run, keeping every queued event small).
    assert_eq!(
        allocs,
        stalls(&out).len() as u64,
        "allocations on the secure UDP ingress path"
    );
    assert_eq!(r.obs.ingress_counters().datagrams, u64::from(n) + 1);
    assert_eq!(counter(&r.obs, "beats"), u64::from(n));
    assert_eq!(counter(&r.obs, "secure_replay_refused"), 1);
    assert_eq!(stalls(&out).len(), 16);
    assert_eq!(r.obs.secure_senders(), Some(0));
}

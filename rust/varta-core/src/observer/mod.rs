//! The observer core (`docs/observer.md`): listeners with kernel peer
//! credentials, ingress gates, the per-pid tracker with its deadline
//! structure, and the events they produce. Knows nothing of Python.
//!
//! | module | job |
//! |---|---|
//! | [`clock`] | observer time, injectable ([`clock::FakeClock`] in tests) |
//! | [`tracker`], [`deadline`], [`counters`] | per-pid state (`tracker/`: the engine in `mod.rs`, its public types in `types.rs`, the 64-byte `Slot` in `slot.rs`), stall deadlines, tracker counters |
//! | [`pid_index`] | the tracker's SIMD cache-line `pid → slot` index |
//! | [`listener`] | the Unix datagram socket: bind rules, `SO_PASSCRED` (+ `SO_PASSPIDFD` where the kernel has it), `recvmmsg` batches |
//! | [`cmsg`] | a received datagram's control messages: credentials, passed descriptors, the sender's pidfd |
//! | [`verdict`], [`exitwatch`] | why an agent went silent: terminal causes, kernel liveness, pidfd exit watch |
//! | [`forensics`] | hang captures on a `hung` verdict: `/proc` threads, the SDK channel's tracebacks, capture files |
//! | [`pump`] | the ingest thread: drains the sockets continuously, queues events for a consumer |
//! | [`identity`] | who a kernel-attested agent is: comm, short command line, systemd unit, container id (read once per process) |
//! | [`procfs`] | `/proc` identity: pid-namespace inode, start time, `pid_max`; pidfd liveness |
//! | [`config`] | [`ObserverConfig`] (defaults, validation) and [`ObserverError`] |
//! | [`gates`] | the ingress gates in the spec's order, the global token bucket, [`gates::IngressCounters`]; what a listener hands over ([`gates::Received`], [`gates::Peer`]) |
//! | [`ingress`] | [`Observer`]: the [`Listener`] kinds, the drain loop (listeners → gates → tracker → [`Event`]s, then the gates' stall expiry), the [`Waiter`], the counter table |
//! | [`udp`] | plaintext and secure UDP listeners (network origins) |
//! | [`event`] | the event values |
//! | [`rows`] | per-pid exporter rows and their Prometheus sample lines |
//! | [`signals`] | the daemon's stop-signal latch (`--signal-handler-mode`) |
//! | `bench` | benchmark drivers, cargo feature `bench` (for `bench/` and examples) |

#[cfg(feature = "bench")]
pub mod bench;
pub mod clock;
pub mod cmsg;
pub mod config;
pub mod counters;
pub mod deadline;
pub mod event;
pub mod exitwatch;
pub mod forensics;
pub mod gates;
pub mod identity;
pub mod ingress;
pub mod listener;
pub mod pid_index;
pub mod procfs;
pub mod pump;
pub mod rows;
pub mod signals;
pub mod tracker;
pub mod udp;
pub mod verdict;

pub use event::Event;
pub use ingress::{CounterValue, Listener, Observer, ObserverConfig, ObserverError, Waiter};
pub use tracker::BeatOrigin;
pub use verdict::{TerminalCause, Verdict};

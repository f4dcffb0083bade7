//! Tracker per-beat cost at 100 / 10,000 / 100,000 pids, run in interleaved
//! chunks (see `observer::bench`). Quicker to iterate on than
//! `bench/observer.py`:
//! `cargo run --release -p varta-core --example tracker_scaling -- [chunks] [beats/chunk] [dense|stride:N|scattered]`.
use varta_core::observer::bench::{bench_tracker_scaling_layout, PidLayout};

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let chunks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let beats: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(250_000);
    let layout = args
        .next()
        .map(|a| PidLayout::parse(&a).expect("layout: dense, stride:1..=4 or scattered"))
        .unwrap_or(PidLayout::Dense);
    println!("pid layout {layout:?}");
    let rows = bench_tracker_scaling_layout(&[100, 10_000, 100_000], beats, chunks, layout);
    let base = &rows[0].chunk_ns_per_beat;
    for r in &rows {
        let mean = r.chunk_ns_per_beat.iter().sum::<f64>() / r.chunk_ns_per_beat.len() as f64;
        let ratios: Vec<f64> = r
            .chunk_ns_per_beat
            .iter()
            .zip(base)
            .map(|(a, b)| a / b)
            .collect();
        println!(
            "{:>7} pids: mean {mean:5.1} ns/beat, median {:5.1}, {} B/agent; per-round ratio to 100: median {:.2}",
            r.agents,
            median(&r.chunk_ns_per_beat),
            r.bytes_per_agent,
            median(&ratios)
        );
    }
}

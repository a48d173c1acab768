//! The chunk pipeline: sealing and opening 64 MiB through the parallel
//! STREAM writer and reader, in memory (no disk, no tar).
//!
//! `cargo bench --bench stream`

use coffer::archive::stream::{PayloadKey, StreamReader, StreamWriter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::io::{Cursor, Write};

const LEN: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

fn bench(c: &mut Criterion) {
    let key = PayloadKey::new(&[7; 32]);
    let data = vec![0x5au8; LEN];
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(20);
    g.bench_function("seal 64 MiB", |b| {
        b.iter(|| {
            let mut w = StreamWriter::new(key.clone(), CHUNK, std::io::sink()).unwrap();
            w.write_all(black_box(&data)).unwrap();
            w.finish().unwrap();
        })
    });
    let mut w = StreamWriter::new(key.clone(), CHUNK, Vec::new()).unwrap();
    w.write_all(&data).unwrap();
    let sealed: std::sync::Arc<[u8]> = w.finish().unwrap().into();
    g.bench_function("open 64 MiB", |b| {
        b.iter(|| {
            let mut r = StreamReader::new(
                key.clone(),
                CHUNK,
                Cursor::new(std::sync::Arc::clone(&sealed)),
            )
            .unwrap();
            let n = r.copy_to(&mut std::io::sink(), &mut |_| {}).unwrap();
            assert_eq!(n, LEN as u64);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

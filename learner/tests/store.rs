//! FlowStore: round trip, partitions, WAL replay, corrupt segments, and the
//! kill -9 test.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_learner::store::{self, FlowStore};
use cnpilot_learner::synth::{SynthConfig, SynthFlows};
use cnpilot_learner::FlowRecord;

fn records(n: usize, seed: u64) -> Vec<FlowRecord> {
    SynthFlows::new(SynthConfig {
        seed,
        ..Default::default()
    })
    .take(n)
    .collect()
}

/// The one write-ahead file of a store that was not flushed.
fn wal_file(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("_wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap()
}

#[test]
fn roundtrip_through_segments_keeps_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let input = records(2_000, 7);
    let mut store = FlowStore::open_with(dir.path(), 700).unwrap();
    store.append(&input).unwrap();
    store.close().unwrap();
    let mut output = store::read_all(dir.path()).unwrap();
    let mut expected = input.clone();
    let key = |r: &FlowRecord| (r.window_start_ns, r.node.clone());
    output.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(output, expected);
    // Partitioned by node and hour.
    let files = store::segment_files(dir.path()).unwrap();
    assert!(files.iter().all(|f| {
        let s = f.to_string_lossy();
        s.contains("/node=node-") && s.contains("/hour=2026010100/")
    }));
    assert!(files.len() >= 3, "{files:?}");
}

#[test]
fn unflushed_records_are_replayed_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let input = records(100, 1);
    {
        let mut store = FlowStore::open(dir.path()).unwrap();
        store.append(&input).unwrap();
        // Dropped without flush: like a crash after the ack.
    }
    assert!(store::segment_files(dir.path()).unwrap().is_empty());
    let store = FlowStore::open(dir.path()).unwrap();
    assert_eq!(store::read_all(dir.path()).unwrap().len(), 100);
    drop(store);
    // Opening again replays nothing twice.
    let _store = FlowStore::open(dir.path()).unwrap();
    assert_eq!(store::read_all(dir.path()).unwrap().len(), 100);
}

#[test]
fn truncated_wal_tail_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = FlowStore::open(dir.path()).unwrap();
        store.append(&records(10, 2)).unwrap();
    }
    let wal = wal_file(dir.path());
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    f.write_all(b"{\"window_start_ns\":12,\"node").unwrap();
    drop(f);
    let _store = FlowStore::open(dir.path()).unwrap();
    assert_eq!(store::read_all(dir.path()).unwrap().len(), 10);
}

/// Every prefix of a write-ahead file (a crash can stop a write anywhere)
/// replays to exactly the batches whose frames are whole: never a partial
/// batch, never an error, never a panic.
#[test]
fn wal_cut_at_any_byte_replays_whole_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let batches = [records(3, 11), records(5, 12), records(4, 13)];
    let mut frame_ends = Vec::new();
    let wal = {
        let mut store = FlowStore::open(dir.path()).unwrap();
        let wal_file = || wal_file(dir.path());
        for batch in &batches {
            store.append(batch).unwrap();
            frame_ends.push(std::fs::metadata(wal_file()).unwrap().len());
        }
        let wal = wal_file();
        let bytes = std::fs::read(&wal).unwrap();
        drop(store);
        bytes
    };
    // Every byte around each frame boundary, and a stride elsewhere (each
    // cut opens a store and writes Parquet: all of them is slow in debug).
    let mut cuts: Vec<usize> = (0..=wal.len()).step_by(29).collect();
    for &end in std::iter::once(&8u64).chain(&frame_ends) {
        let end = end as usize;
        cuts.extend(end.saturating_sub(10)..=(end + 10).min(wal.len()));
    }
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let work = tempfile::tempdir().unwrap();
        let wal_dir = work.path().join("_wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(wal_dir.join("wal-0000000001.log"), &wal[..cut]).unwrap();
        drop(FlowStore::open(work.path()).unwrap());
        let whole = frame_ends
            .iter()
            .filter(|&&end| end as usize <= cut)
            .count();
        let expected: usize = batches[..whole].iter().map(Vec::len).sum();
        let got = store::read_all(work.path()).unwrap().len();
        assert_eq!(got, expected, "WAL cut at byte {cut} of {}", wal.len());
    }
}

/// A write-ahead file of the first store version (one JSON record per line)
/// left behind by a crash is still replayed after an upgrade.
#[test]
fn json_wal_of_the_first_version_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("_wal");
    std::fs::create_dir_all(&wal_dir).unwrap();
    let input = records(25, 31);
    let mut text = String::new();
    for r in &input {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    // A torn last line, never acknowledged.
    text.push_str("{\"window_start_ns\":1");
    std::fs::write(wal_dir.join("wal-0000000004.log"), text).unwrap();
    drop(FlowStore::open(dir.path()).unwrap());
    let mut output = store::read_all(dir.path()).unwrap();
    let mut expected = input;
    let key = |r: &FlowRecord| (r.window_start_ns, r.node.clone());
    output.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(output, expected);
}

/// A flipped bit inside a frame is caught by its checksum: that frame and
/// the ones after it are dropped, the ones before it kept.
#[test]
fn corrupt_wal_frame_keeps_the_frames_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal_file = || wal_file(dir.path());
    let first_end = {
        let mut store = FlowStore::open(dir.path()).unwrap();
        store.append(&records(6, 21)).unwrap();
        let end = std::fs::metadata(wal_file()).unwrap().len();
        store.append(&records(6, 22)).unwrap();
        end
    };
    let path = wal_file();
    let mut bytes = std::fs::read(&path).unwrap();
    let victim = first_end as usize + 20;
    bytes[victim] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    drop(FlowStore::open(dir.path()).unwrap());
    assert_eq!(store::read_all(dir.path()).unwrap().len(), 6);
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = FlowStore::open(dir.path()).unwrap();
    let err = FlowStore::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    // Once the first writer is gone, the directory opens again.
    drop(first);
    FlowStore::open(dir.path()).unwrap();
}

#[test]
fn corrupt_segment_is_skipped_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlowStore::open(dir.path()).unwrap();
    store.append(&records(50, 3)).unwrap();
    store.flush().unwrap();
    store.append(&records(50, 4)).unwrap();
    store.close().unwrap();
    let files = store::segment_files(dir.path()).unwrap();
    let victim = &files[0];
    let len = std::fs::metadata(victim).unwrap().len();
    let rows_in_victim = {
        let (_, r) = store::scan(&[dir.path().to_path_buf()], None).unwrap();
        r.rows
    };
    // Truncate one segment in the middle of its footer.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let (lf, report) = store::scan(&[dir.path().to_path_buf()], None).unwrap();
    assert_eq!(report.skipped.len(), 1);
    let height = lf.collect().unwrap().height();
    assert!(height < rows_in_victim && height > 0, "{height}");
}

#[test]
fn scan_of_an_empty_or_missing_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (lf, report) = store::scan(&[dir.path().join("nope")], None).unwrap();
    assert_eq!(report.segments, 0);
    assert_eq!(lf.collect().unwrap().height(), 0);
}

const CHILD_ENV: &str = "CNPILOT_CRASH_WRITER_DIR";

/// Not a test on its own: the writer process of `kill_9_loses_no_acked_record`.
/// It appends records with unique start times and prints each acked id.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let base: i64 = std::env::var("CNPILOT_CRASH_BASE")
        .unwrap()
        .parse()
        .unwrap();
    // Small segments so kills also land during rotation.
    let mut store = FlowStore::open_with(&dir, 64).unwrap();
    let template = records(1, 9).remove(0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for i in 0.. {
        let batch: Vec<FlowRecord> = (0..7)
            .map(|j| {
                let mut r = template.clone();
                r.window_start_ns = base + i * 7 + j;
                r.node = format!("node-{}", (i + j) % 3);
                r
            })
            .collect();
        store.append(&batch).unwrap();
        for r in &batch {
            writeln!(out, "ACK {}", r.window_start_ns).unwrap();
        }
        out.flush().unwrap();
    }
}

fn run_and_kill(dir: &Path, base: i64, after: Duration) -> Vec<i64> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("CNPILOT_CRASH_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.parse::<i64>().unwrap());
            }
        }
        acked
    });
    let start = Instant::now();
    while start.elapsed() < after {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn kill_9_loses_no_acked_record() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked_all = Vec::new();
    for round in 0..6i64 {
        let acked = run_and_kill(
            dir.path(),
            round * 1_000_000_000,
            Duration::from_millis(150 + 60 * round as u64),
        );
        acked_all.extend(acked);
    }
    assert!(
        acked_all.len() > 100,
        "the writer acked only {}",
        acked_all.len()
    );
    // Opening replays what the last kill left in the WAL.
    drop(FlowStore::open(dir.path()).unwrap());
    let stored: Vec<i64> = store::read_all(dir.path())
        .unwrap()
        .iter()
        .map(|r| r.window_start_ns)
        .collect();
    let unique: HashSet<i64> = stored.iter().copied().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "duplicated records after replay"
    );
    let missing: Vec<&i64> = acked_all.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acked records lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// DNS records: a query (no answer), an answer with v4 and v6 addresses,
/// an NXDOMAIN answer (no addresses), and an HTTP record beside them.
fn dns_records() -> Vec<FlowRecord> {
    use cnpilot_learner::{DnsAnswer, L7Protocol, L7};
    let base = records(4, 5);
    let dns = |mut r: FlowRecord, i: i64, answer: Option<DnsAnswer>| {
        r.window_start_ns = 1_767_225_600_000_000_000 + i;
        r.window_end_ns = r.window_start_ns;
        r.node = "node-0".into();
        r.proto = 17;
        r.dst_port = 53;
        r.l7 = Some(L7 {
            protocol: L7Protocol::Dns,
            method: Some("A,AAAA".into()),
            path: None,
            query: None,
            host: Some("api.github.com".into()),
            status: answer
                .as_ref()
                .map(|a| if a.ips.is_empty() { 3 } else { 0 }),
            dns: answer,
        });
        r
    };
    let mut http = base[3].clone();
    http.window_start_ns = 1_767_225_600_000_000_000 + 3;
    http.window_end_ns = http.window_start_ns;
    http.node = "node-0".into();
    vec![
        dns(base[0].clone(), 0, None),
        dns(
            base[1].clone(),
            1,
            Some(DnsAnswer {
                ips: vec![
                    "140.82.121.6".parse().unwrap(),
                    "2606:50c0:8000::64".parse().unwrap(),
                ],
                ttl: 60,
            }),
        ),
        dns(
            base[2].clone(),
            2,
            Some(DnsAnswer {
                ips: vec![],
                ttl: u32::MAX,
            }),
        ),
        http,
    ]
}

fn sorted(mut records: Vec<FlowRecord>) -> Vec<FlowRecord> {
    records.sort_by_key(|r| r.window_start_ns);
    records
}

#[test]
fn dns_answers_roundtrip_through_the_wal_and_segments() {
    let input = dns_records();
    assert!(
        input
            .iter()
            .filter(|r| r.l7.as_ref().is_some_and(|l| l.dns.is_some()))
            .count()
            == 2
    );
    // Flushed: straight to a segment.
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlowStore::open(dir.path()).unwrap();
    store.append(&input).unwrap();
    store.close().unwrap();
    assert_eq!(sorted(store::read_all(dir.path()).unwrap()), input);
    // Not flushed: the segment is rebuilt from the write-ahead file.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = FlowStore::open(dir.path()).unwrap();
        store.append(&input).unwrap();
    }
    drop(FlowStore::open(dir.path()).unwrap());
    assert_eq!(sorted(store::read_all(dir.path()).unwrap()), input);
}

/// A segment written before `dns_ips` / `dns_ttl` existed: it is read (not
/// skipped as another schema), its records have no DNS answer, and the
/// aggregation reads it with newer segments beside it.
#[test]
fn segment_without_the_dns_columns_still_reads() {
    use cnpilot_learner::aggregate::{learn, LearnOptions};
    use cnpilot_learner::record::columns;
    use polars::prelude::{ParquetWriter, PlSmallStr};

    let dir = tempfile::tempdir().unwrap();
    // One node: the file goes into that node's partition.
    let old: Vec<FlowRecord> = records(50, 9)
        .into_iter()
        .map(|mut r| {
            r.node = "node-0".into();
            r
        })
        .collect();
    let mut frame = store::records_to_frame(&old).unwrap();
    frame = frame
        .drop_many(columns::ADDED.iter().map(|c| PlSmallStr::from(*c)))
        .clone();
    assert_eq!(frame.width(), 27, "the first store schema");
    let part = dir.path().join("node=node-0").join("hour=2026010100");
    std::fs::create_dir_all(&part).unwrap();
    let file = std::fs::File::create(part.join("seg-0000000001.parquet")).unwrap();
    ParquetWriter::new(file).finish(&mut frame).unwrap();

    let (paths, report) = store::readable_segments(&[dir.path().to_path_buf()], None).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(paths.len(), 1);
    let read = store::read_all(dir.path()).unwrap();
    assert_eq!(read.len(), 50);
    assert!(read
        .iter()
        .all(|r| r.l7.as_ref().is_none_or(|l| l.dns.is_none())));
    let key = |r: &FlowRecord| (r.window_start_ns, r.node.clone());
    let (mut a, mut b) = (read.clone(), old.clone());
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);

    // A new segment beside it: both read, the new one's answers kept.
    let mut store = FlowStore::open(dir.path()).unwrap();
    store.append(&dns_records()).unwrap();
    store.close().unwrap();
    let all = store::read_all(dir.path()).unwrap();
    assert_eq!(all.len(), 54);
    let answers = all
        .iter()
        .filter(|r| r.l7.as_ref().is_some_and(|l| l.dns.is_some()))
        .count();
    assert_eq!(answers, 2);
    let table = learn(&[dir.path().to_path_buf()], &LearnOptions::default()).unwrap();
    assert_eq!(table.scan.segments, 2);
    assert_eq!(table.rows.iter().map(|r| r.records).sum::<u64>(), 54);
    // The answer's two addresses, for the workload that asked; the
    // NXDOMAIN answer gave none.
    let asked = &dns_records()[1];
    let ips: Vec<String> = table.dns.iter().map(|a| a.ip.to_string()).collect();
    assert_eq!(ips, ["140.82.121.6", "2606:50c0:8000::64"]);
    for a in &table.dns {
        assert_eq!(a.src_identity, asked.src.identity);
        assert_eq!(a.src_workload, asked.src.workload);
        assert_eq!(a.name, "api.github.com");
        assert_eq!((a.ttl, a.answers), (60, 1));
        assert_eq!(a.first_answered_ns, asked.window_start_ns);
    }
}

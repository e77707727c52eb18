//! The fuzz targets on stable Rust: every seed of `corpus/<target>/`, then
//! mutated inputs (bit flips, byte edits, insertions of dictionary words,
//! splices of two seeds), through the same functions libFuzzer calls.
//!
//! `cargo test --release` (in `fuzz/`). `FUZZ_ITERATIONS` sets the number of
//! mutated inputs per target (default 3000), `FUZZ_SEED` the random seed
//! (default fixed, so a failure reproduces). A failing input is printed and
//! written to `artifacts/<target>/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut data = seeds
        .get(rng.below(seeds.len()))
        .cloned()
        .unwrap_or_default();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let chunk = data[i..i + n].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, chunk);
            }
            5 | 6 if !dictionary.is_empty() => {
                let word = dictionary[rng.below(dictionary.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, word.iter().copied());
            }
            _ if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

fn run(target: &str, f: fn(&[u8]), dictionary: &[&[u8]]) {
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x005E_ED0F_F022);
    let mut rng = Rng(seed | 1);
    let inputs = seeds
        .iter()
        .cloned()
        .chain((0..iterations).map(|_| mutate(&mut rng, &seeds, dictionary)));
    let mut count = 0;
    for (i, input) in inputs.enumerate() {
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(target);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("crash-stable-{seed}-{i}"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "{target}: input {i} (seed {seed}) broke a promise; saved as {}: {:?}",
                file.display(),
                String::from_utf8_lossy(&input)
            );
        }
        count += 1;
    }
    println!(
        "{target}: {} seeds and {iterations} mutated inputs passed ({count} in all)",
        seeds.len()
    );
}

#[test]
fn config_loader_keeps_its_promises() {
    run(
        "config",
        wxtoken_fuzz::config,
        &[
            b"accounts:\n",
            b"  - appid: wx1111111111111111\n",
            b"    secret: ${WX_SECRET}\n",
            b"    secret_file: nope\n",
            b"    mode: legacy\n",
            b"clients:\n  - name: a\n    key: sha256:",
            b"refresh:\n  jitter: ",
            b"upstream:\n  base_urls: [http://127.0.0.1:1]\n",
            b"listen: 0.0.0.0:8080\n",
            b"${",
            b"}",
            b"&a ",
            b"*a",
            b"<<: ",
            b"!!str ",
            b"- ",
            b": ",
            b"\t",
            b"\n",
            b"'",
            b"\"",
            b"300s",
            b"-1",
            b"1e309",
            b"\xef\xbb\xbf",
        ],
    );
}

#[test]
fn wechat_client_keeps_its_promises() {
    run(
        "wechat_answer",
        wxtoken_fuzz::wechat_answer,
        &[
            b"{\"access_token\":\"",
            b"\"expires_in\":",
            b"\"errcode\":",
            b"\"errmsg\":\"",
            b"\"ticket\":\"",
            b"\"ip_list\":[",
            b"Up5treamSecretThatMustNeverLeak",
            b"40164",
            b"45009",
            b"-1",
            b"null",
            b"1e400",
            b"}",
            b",",
            b"\\u0000",
        ],
    );
}

#[test]
fn http_api_keeps_its_promises() {
    run(
        "http_request",
        wxtoken_fuzz::http_request,
        &[
            b"{\"stale_token\":\"",
            b"\"}",
            b"wx00000000000f0001",
            b"/v1/token/",
            b"/refresh",
            b"%00",
            b"%2F",
            b"..",
            b"\x00",
            b"Bearer ",
        ],
    );
}

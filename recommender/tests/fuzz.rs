//! Fuzz-style: mutated, truncated and random inputs never panic the loader
//! or the case runner, and random DNS patterns match as Cilium's regexes
//! do. A fixed-seed generator keeps failures reproducible.

use cnpilot_recommender::cases::{parse_cases, run_case};
use cnpilot_recommender::model::load_str;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "{}",
    "[]",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "|",
    ">",
    "---\n",
    "\n",
    "  ",
    "\t",
    "&a ",
    "*a",
    "!!str ",
    "~",
    "null",
    "-1",
    "65536",
    "0",
    "99999999999999999999",
    "/33",
    "::1/200",
    "fromEndpoints",
    "toPorts",
    "port",
    "endPort",
    "matchExpressions",
    "operator: In",
    "values",
    "rules",
    "http",
    "path: \"(\"",
    "ingressDeny",
    "nodeSelector",
    "specs",
    "kind: Foo",
    "\u{0}",
    "é",
    "#",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(6) {
            0 => s.truncate(at),
            1 => {
                let end = (at + rng.below(40)).min(s.len());
                s.drain(at..end);
            }
            2 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                s.splice(at..at, tok.chars());
            }
            3 => {
                let c = char::from_u32((rng.next() % 0x2FF) as u32).unwrap_or('x');
                s.insert(at, c);
            }
            4 => {
                // Duplicate a slice (repeated keys, repeated lines).
                let end = (at + rng.below(80)).min(s.len());
                let dup: Vec<char> = s[at..end].to_vec();
                s.splice(at..at, dup);
            }
            _ => {
                if at < s.len() && s[at] == ' ' {
                    s.remove(at);
                } else {
                    s.insert(at, ' ');
                }
            }
        }
    }
    s.into_iter().collect()
}

fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for dir in [
        format!("{ROOT}/cli/policies/seed"),
        format!("{}/cases", env!("CARGO_MANIFEST_DIR")),
    ] {
        for entry in std::fs::read_dir(dir).unwrap() {
            out.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    out.push(
        std::fs::read_to_string(format!("{ROOT}/recommender/seed-cases/article.yaml")).unwrap(),
    );
    out
}

#[test]
fn mutated_policies_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut ok, mut bad) = (0, 0);
    for i in 0..4000 {
        let seed = &seeds[i % seeds.len()];
        let text = mutate(&mut rng, seed);
        match load_str(&text, "fuzz.yaml") {
            Ok(_) => ok += 1,
            Err(e) => {
                bad += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Both branches must be exercised, or the mutator is not doing its job.
    assert!(ok > 0 && bad > 0, "ok {ok}, bad {bad}");
}

#[test]
fn mutated_case_files_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x0dd_ba11_5eed_0002);
    for i in 0..1500 {
        let text = mutate(&mut rng, &seeds[i % seeds.len()]);
        if let Ok(cases) = parse_cases(&text, "fuzz.yaml") {
            for case in &cases {
                let _ = run_case(case, "fuzz.yaml");
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0xfeed_beef_0000_0003);
    for _ in 0..2000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = load_str(&text, "random.yaml");
        let _ = parse_cases(&text, "random.yaml");
    }
}

#[test]
fn deep_nesting_does_not_overflow() {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let _ = load_str(&deep, "deep.yaml");
    let deep_map = "a:\n".to_string()
        + &(1..300)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect::<String>();
    let _ = load_str(&deep_map, "deep.yaml");
}

/// Cilium's translation of a `matchPattern` into a regex
/// (pkg/fqdn/matchpattern/matchpattern.go: `Sanitize`, then
/// `ToAnchoredRegexp`), ported literally to check `fqdn_matches` against.
fn cilium_pattern_regex(pattern: &str) -> regex::Regex {
    const CHARS: &str = "[-a-zA-Z0-9_]";
    let is_wildcard = |p: &str| {
        let p = p.strip_suffix('.').unwrap_or(p);
        !p.is_empty() && p.bytes().all(|c| c == b'*')
    };
    let source = if is_wildcard(pattern) {
        format!("(^({CHARS}+[.])+$)|(^[.]$)")
    } else {
        let p = if pattern.ends_with('.') {
            pattern.to_lowercase()
        } else {
            format!("{}.", pattern.to_lowercase())
        };
        let b = p.as_bytes();
        let mut out = String::from("^");
        let stars = b.iter().take_while(|c| **c == b'*').count();
        let mut i = 0;
        if stars >= 2 && b.get(stars) == Some(&b'.') {
            out.push_str(&format!("({CHARS}+([.]{CHARS}+){{0,}})[.]"));
            i = stars + 1;
        }
        while i < b.len() {
            match b[i] {
                b'.' => out.push_str("[.]"),
                b'*' => {
                    while b.get(i + 1) == Some(&b'*') {
                        i += 1;
                    }
                    out.push_str(CHARS);
                    out.push('*');
                }
                c => out.push(c as char),
            }
            i += 1;
        }
        out.push('$');
        out
    };
    regex::Regex::new(&source).unwrap()
}

#[test]
fn fqdn_matches_agrees_with_ciliums_regexes() {
    use cnpilot_recommender::compile::fqdn_matches;
    let mut rng = Rng(0xd45_0000_0000_0004);
    let pick = |rng: &mut Rng, parts: &[&str], max: usize| -> String {
        (0..rng.below(max) + 1)
            .map(|_| parts[rng.below(parts.len())])
            .collect()
    };
    let (mut matched, mut missed) = (0, 0);
    for _ in 0..20_000 {
        let pattern = pick(&mut rng, &["a", "b", "-", "_", ".", "*", "**.", "A"], 8);
        let name = pick(&mut rng, &["a", "b", "-", "_", ".", "A", "a."], 8);
        let fqdn = if name.ends_with('.') {
            name.to_lowercase()
        } else {
            format!("{}.", name.to_lowercase())
        };
        let want = cilium_pattern_regex(&pattern).is_match(&fqdn);
        let got = fqdn_matches(None, Some(&pattern), &name);
        assert_eq!(got, want, "pattern {pattern:?} vs name {name:?}");
        if want {
            matched += 1;
        } else {
            missed += 1;
        }
        // A name always matches itself as a matchName.
        assert!(fqdn_matches(Some(&name), None, &name.to_uppercase()));
    }
    // Both answers must come up, or the generator proves nothing.
    assert!(
        matched > 500 && missed > 500,
        "{matched} matched, {missed} not"
    );
}

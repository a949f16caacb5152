//! Compiles the C eBPF objects (the datapath, and with the `bench` feature
//! the producer of the ring-buffer benchmark) and a host program that prints
//! the C layouts for the layout test, into OUT_DIR.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let c_dir = manifest.join("c");
    for f in [
        "cnpilot.bpf.c",
        "ringbench.bpf.c",
        "cnpilot.h",
        "parse.h",
        "hostpath.h",
        "layout.c",
    ] {
        println!("cargo:rerun-if-changed={}", c_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => ("x86", "x86_64"),
        Ok("aarch64") => ("arm64", "aarch64"),
        Ok(other) => fail(&format!("unsupported target architecture {other}")),
        Err(_) => fail("cargo did not set CARGO_CFG_TARGET_ARCH"),
    };
    let multiarch = format!("/usr/include/{}-linux-gnu", arch.1);

    // The benchmark's producer is not part of the shipped library.
    let mut objects = vec!["cnpilot"];
    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        objects.push("ringbench");
    }
    for name in objects {
        run(
            Command::new(&clang)
                .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
                .arg(format!("-D__TARGET_ARCH_{}", arch.0))
                .arg(format!("-I{multiarch}"))
                .arg(format!("-I{}", c_dir.display()))
                .arg("-c")
                .arg(c_dir.join(format!("{name}.bpf.c")))
                .arg("-o")
                .arg(out.join(format!("{name}.bpf.o"))),
            &clang,
        );
    }

    let layout_bin = out.join("cnpilot-layout");
    run(
        Command::new(&clang)
            .arg(format!("-I{}", c_dir.display()))
            .arg(c_dir.join("layout.c"))
            .arg("-o")
            .arg(&layout_bin),
        &clang,
    );
    let printed = Command::new(&layout_bin)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {}: {e}", layout_bin.display())));
    if !printed.status.success() {
        fail(&format!("{} failed", layout_bin.display()));
    }
    std::fs::write(out.join("c_layout.rs"), printed.stdout)
        .unwrap_or_else(|e| fail(&format!("writing c_layout.rs: {e}")));
}

fn run(cmd: &mut Command, clang: &str) {
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: the eBPF programs are C compiled with clang -target bpf. \
             Install clang and libbpf-dev (scripts/deps.sh does), or set CLANG=/path/to/clang"
        )),
        Err(e) => fail(&format!("running {clang}: {e}")),
    };
    if !status.success() {
        fail(&format!("{cmd:?} failed ({status})"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("cnpilot-bpf build: {msg}");
    std::process::exit(1)
}

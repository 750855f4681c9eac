//! Compiles the kernel fast path (`bpf/forward.bpf.c`) with clang into an eBPF object
//! the node embeds. Without clang the node builds anyway, relays in userspace only, and
//! says so when it starts; `SWITCHYARD_REQUIRE_BPF=1` (set by `.ci/run`) makes a
//! missing clang an error instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(switchyard_bpf)");
    println!("cargo::rerun-if-changed=bpf/forward.bpf.c");
    println!("cargo::rerun-if-env-changed=SWITCHYARD_REQUIRE_BPF");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("forward.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch_headers = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
    );
    let built = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{arch_headers}"))
        .args(["-c", "bpf/forward.bpf.c", "-o"])
        .arg(&object)
        .output();
    let failure = match built {
        Ok(o) if o.status.success() => {
            println!("cargo::rustc-cfg=switchyard_bpf");
            return;
        }
        Ok(o) => format!(
            "{clang} could not compile bpf/forward.bpf.c:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{clang} not found ({e}); install clang and libbpf-dev"),
    };
    if std::env::var_os("SWITCHYARD_REQUIRE_BPF").is_some_and(|v| v == "1") {
        panic!("kernel forwarding required: {failure}");
    }
    println!("cargo::warning=kernel RTP forwarding left out: {failure}");
}

//! Gate for the privileged test tiers (root + BPF, and the lab).

/// Whether a test that needs root may run here. Off root it prints a loud
/// skip and returns `false`, except under `CI=true`, where every tier must
/// run: there it panics so the run fails instead of passing vacuously.
pub fn privileged_tests_enabled(test: &str) -> bool {
    if crate::sys::is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (CAP_BPF, CAP_NET_ADMIN) and CI=true forbids skipping it");
    }
    eprintln!(
        "\n!!! SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN); run the suite as root !!!\n"
    );
    false
}

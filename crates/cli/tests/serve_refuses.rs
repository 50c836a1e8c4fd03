//! `wayfinder serve` refuses settings that would silently do the wrong thing, before it loads
//! anything: a blank API key (which would turn auth off), and durations that are not numbers
//! of seconds it can keep.

use std::process::Command;

fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .arg("serve")
        .args(args)
        .env_remove("WAYFINDER_API_KEY")
        .envs(env.iter().copied())
        .env(
            "WAYFINDER_CACHE",
            std::env::temp_dir().join("wayfinder-refuses"),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(!out.status.success(), "{args:?} must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_blank_api_key_is_refused_at_start() {
    for key in ["", "   "] {
        let err = refused(&["--api-key", key, "--port", "0"], &[]);
        assert!(err.contains("--api-key"), "{err}");
    }
    let err = refused(&["--port", "0"], &[("WAYFINDER_API_KEY", "")]);
    assert!(err.contains("api-key") || err.contains("API_KEY"), "{err}");
}

#[test]
fn durations_must_be_finite_in_range_seconds() {
    for (flag, value) in [
        ("--shutdown-timeout", "inf"),
        ("--shutdown-timeout", "-5"),
        ("--shutdown-timeout", "nan"),
        ("--request-timeout", "1e30"),
        ("--request-timeout", "0"),
        ("--request-timeout", "nan"),
        ("--http-idle-timeout", "-1"),
    ] {
        let err = refused(&[&format!("{flag}={value}")], &[]);
        assert!(
            err.contains(flag) && err.contains("seconds"),
            "{flag} {value}: {err}"
        );
    }
}

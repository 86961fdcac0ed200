//! The binaries' command lines: `--help` and `--version` print and exit 0 without reading any
//! configuration (so without starting anything), and an unknown flag or command is refused.

use std::collections::HashMap;

use lectern_tests::run_to_end;

const BINARIES: [&str; 2] = ["lectern-api", "lectern-worker"];

#[test]
fn help_prints_usage_and_exits_0_without_configuration() {
    for binary in BINARIES {
        for flag in ["--help", "-h"] {
            let (status, output) = run_to_end(binary, &[flag], &HashMap::new());
            assert_eq!(status.code(), Some(0), "{binary} {flag}: {output}");
            assert!(output.contains("Usage:"), "{binary} {flag}: {output}");
            assert!(output.contains(binary), "{binary} {flag}: {output}");
        }
    }
    let (_, output) = run_to_end("lectern-api", &["--help"], &HashMap::new());
    for command in ["serve", "migrate", "create-admin"] {
        assert!(output.contains(command), "lists {command}: {output}");
    }
    let (status, output) = run_to_end("lectern-api", &["create-admin", "--help"], &HashMap::new());
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("--email"), "{output}");
}

#[test]
fn version_prints_the_version_and_exits_0() {
    for binary in BINARIES {
        let (status, output) = run_to_end(binary, &["--version"], &HashMap::new());
        assert_eq!(status.code(), Some(0), "{binary}: {output}");
        assert!(
            output.contains(env!("CARGO_PKG_VERSION")),
            "{binary}: {output}"
        );
    }
}

#[test]
fn an_unknown_flag_or_command_is_refused() {
    for binary in BINARIES {
        let (status, output) = run_to_end(binary, &["--no-such-flag"], &HashMap::new());
        assert!(!status.success(), "{binary}: {output}");
        assert!(output.contains("--no-such-flag"), "{binary}: {output}");
    }
    let (status, output) = run_to_end("lectern-api", &["frobnicate"], &HashMap::new());
    assert!(!status.success(), "{output}");
    assert!(output.contains("frobnicate"), "{output}");
    // create-admin without its required --email is refused before anything runs.
    let (status, output) = run_to_end("lectern-api", &["create-admin"], &HashMap::new());
    assert!(!status.success(), "{output}");
    assert!(output.contains("--email"), "{output}");
}

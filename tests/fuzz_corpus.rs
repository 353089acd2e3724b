//! The fuzz targets (fuzz/targets.rs) on the stable toolchain: every seed input (fuzz/seeds.txt)
//! and every input the fuzzer ever crashed on (fuzz/regressions/TARGET/) goes through its target
//! and comes back as a value or an error. The libFuzzer runs themselves need nightly
//! (scripts/fuzz); this replay keeps their findings fixed in every test run.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The seed files of each target, from fuzz/seeds.txt.
fn seeds() -> Vec<(String, PathBuf)> {
    let list = std::fs::read_to_string(Path::new(ROOT).join("fuzz/seeds.txt")).unwrap();
    let mut out = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (target, path) = line.split_once(char::is_whitespace).unwrap();
        let path = Path::new(ROOT).join(path.trim());
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
            files.sort();
            assert!(!files.is_empty(), "{}: an empty seed folder", path.display());
            out.extend(files.into_iter().map(|f| (target.to_string(), f)));
        } else {
            assert!(path.is_file(), "fuzz/seeds.txt names {}, which is not a file", path.display());
            out.push((target.to_string(), path));
        }
    }
    out
}

fn target(name: &str) -> fn(&[u8]) {
    targets::TARGETS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no fuzz target {name}")).1
}

#[test]
fn every_target_is_a_cargo_fuzz_binary_with_seeds() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("fuzz/Cargo.toml")).unwrap();
    let seeds = seeds();
    for (name, _) in targets::TARGETS {
        assert!(manifest.contains(&format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"")), "fuzz/Cargo.toml lacks {name}");
        assert!(Path::new(ROOT).join(format!("fuzz/fuzz_targets/{name}.rs")).is_file(), "{name}.rs");
        assert!(seeds.iter().any(|(t, _)| t == name), "{name} has no seed");
    }
    assert_eq!(manifest.matches("[[bin]]").count(), targets::TARGETS.len(), "a binary per target");
}

#[test]
fn every_seed_goes_through_its_target() {
    for (name, path) in seeds() {
        let data = std::fs::read(&path).unwrap();
        target(&name)(&data);
    }
}

#[test]
fn every_input_the_fuzzer_crashed_on_is_handled() {
    let dir = Path::new(ROOT).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, run) in targets::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    // Each folder under fuzz/regressions is a target's.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name == "README.md" || targets::TARGETS.iter().any(|(n, _)| *n == name), "fuzz/regressions/{name} is no target's");
    }
    eprintln!("replayed {replayed} regression inputs");
}

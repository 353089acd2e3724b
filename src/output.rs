//! Writing output files so that nothing is left half-written: write to a temporary file beside
//! the target, then rename; a directory written whole ([`StagedDir`]) goes the same way.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().map(|e| e.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Turns an error writing a command's output (stdout) into the crate's error.
pub fn io_out(e: std::io::Error) -> Error {
    Error::io("<stdout>", e)
}

/// A directory written whole: its files go into a fresh staging directory beside the target,
/// which replaces the target only once complete. So a run never mixes its files with an earlier
/// run's, and a run that fails leaves the earlier one as it was. Only a directory whose every
/// file `owned` accepts is replaced; anything else is refused before any work starts.
#[derive(Debug)]
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Checks that `target` (given by `flag`) can be replaced and creates the staging directory.
    pub fn new(target: &Path, flag: &str, owned: &dyn Fn(&Path) -> bool) -> Result<StagedDir> {
        check_replaceable(target, flag, owned)?;
        let staging = sibling(target, "staging");
        std::fs::create_dir_all(&staging).map_err(|e| unwritable(target, flag, &staging, e))?;
        Ok(StagedDir { target: target.to_path_buf(), staging, committed: false })
    }

    /// Where to write the directory's files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Puts the staged directory in the target's place, removing the earlier one.
    pub fn commit(mut self) -> Result<()> {
        let old = sibling(&self.target, "old");
        let had_old = self.target.exists();
        if had_old {
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
        }
        if let Err(e) = std::fs::rename(&self.staging, &self.target) {
            if had_old {
                let _ = std::fs::rename(&old, &self.target);
            }
            return Err(Error::io(&self.target, e));
        }
        self.committed = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Whether `target` can be replaced by a new directory: it is absent, or a directory whose every
/// file `owned` accepts (by its path inside `target`), and its parent can be written to (a
/// staging directory is made there and removed).
pub fn check_replaceable(target: &Path, flag: &str, owned: &dyn Fn(&Path) -> bool) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A parent that is a file, a directory that cannot be listed...
        Err(e) => return Err(unwritable(target, flag, target, e)),
        Ok(m) if !m.is_dir() => {
            let what = if m.file_type().is_symlink() { "a symbolic link" } else { "a file" };
            return Err(Error::invalid(
                format!("{flag} {} is {what}, not a directory", target.display()),
                format!("pass a directory for {flag} (it is created if missing)"),
            ));
        }
        Ok(_) => {
            let mut foreign = Vec::new();
            foreign_files(target, Path::new(""), owned, &mut foreign)?;
            if !foreign.is_empty() {
                let shown: Vec<String> = foreign.iter().take(5).map(|p| p.display().to_string()).collect();
                let more = if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() };
                return Err(Error::invalid(
                    format!(
                        "{flag} {} holds files that are not a run's ({}{more}); a run replaces the whole directory",
                        target.display(),
                        shown.join(", ")
                    ),
                    format!("choose another {flag}, or move those files away"),
                ));
            }
        }
    }
    let probe = sibling(target, "probe");
    std::fs::create_dir_all(&probe).map_err(|e| unwritable(target, flag, &probe, e))?;
    std::fs::remove_dir(&probe).map_err(|e| Error::io(&probe, e))
}

/// Files under `dir` (relative to the top) that `owned` does not accept.
fn foreign_files(top: &Path, dir: &Path, owned: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let here = top.join(dir);
    let entries = std::fs::read_dir(&here).map_err(|e| Error::io(&here, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&here, e))?;
        let relative = dir.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| Error::io(top.join(&relative), e))?;
        if kind.is_dir() {
            foreign_files(top, &relative, owned, out)?;
        } else if !owned(&relative) {
            out.push(relative);
        }
    }
    Ok(())
}

/// `.NAME.KIND-PID` beside `target`: on its file system, so that renames are atomic.
fn sibling(target: &Path, kind: &str) -> PathBuf {
    let name = target.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{kind}-{}", std::process::id()))
}

fn unwritable(target: &Path, flag: &str, tried: &Path, e: std::io::Error) -> Error {
    let what = if tried == target { String::new() } else { format!("creating {} failed: ", tried.display()) };
    Error::invalid(
        format!("{flag} {} cannot be written: {what}{e}", target.display()),
        format!("choose a {flag} in a directory you can write to"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_txt(p: &Path) -> bool {
        p.extension().is_some_and(|e| e == "txt")
    }

    #[test]
    fn a_staged_directory_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run");
        std::fs::create_dir_all(target.join("sub")).unwrap();
        std::fs::write(target.join("old.txt"), "old").unwrap();
        std::fs::write(target.join("sub/old.txt"), "old").unwrap();
        let staged = StagedDir::new(&target, "--out", &only_txt).unwrap();
        std::fs::write(staged.path().join("new.txt"), "new").unwrap();
        // Until committed, the earlier run is intact.
        assert!(target.join("old.txt").is_file());
        staged.commit().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["new.txt"]);
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_run_leaves_the_earlier_one_and_no_staging() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old.txt"), "old").unwrap();
        {
            let staged = StagedDir::new(&target, "--out", &only_txt).unwrap();
            std::fs::write(staged.path().join("half.txt"), "half").unwrap();
        }
        assert_eq!(std::fs::read_to_string(target.join("old.txt")).unwrap(), "old");
        assert!(!target.join("half.txt").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn what_cannot_be_replaced_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = check_replaceable(&file, "--out", &only_txt).unwrap_err().to_string();
        assert!(err.contains("--out") && err.contains("is a file, not a directory"), "{err}");
        // Under a file, nothing can be created.
        let err = check_replaceable(&file.join("run"), "--out", &only_txt).unwrap_err().to_string();
        assert!(err.contains("cannot be written"), "{err}");
        let mixed = dir.path().join("mixed");
        std::fs::create_dir_all(mixed.join("deep")).unwrap();
        std::fs::write(mixed.join("a.txt"), "").unwrap();
        std::fs::write(mixed.join("deep/thesis.tex"), "").unwrap();
        let err = check_replaceable(&mixed, "--out", &only_txt).unwrap_err().to_string();
        assert!(err.contains("holds files that are not a run's (deep/thesis.tex)"), "{err}");
        assert!(mixed.join("deep/thesis.tex").is_file());
        assert!(check_replaceable(&dir.path().join("new"), "--out", &only_txt).is_ok());
    }
}


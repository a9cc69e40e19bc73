//! What every part of a job reads besides its own input: the job's shared inputs.
//!
//! A command job's files (a script, a program) and a matrix product's right-hand
//! matrix are read by every part. They travel to each server once per job, right
//! after the connection opens and before the job's first part
//! ([`Request::Share`](crate::protocol::Request::Share)), and every part computed there
//! reads the same copy. The local modes and worker processes hold them the same way, so
//! every mode computes a part from the same three things: its task, its own input
//! bytes, and the job's [`JobInputs`].
//!
//! Inputs are named by relative paths (`count.py`, `lib/util.py`). A part that runs a
//! program asks for [`JobInputs::work_dir`]: a fresh temporary folder holding every
//! input as a file, made on first use and removed when the job's inputs are dropped
//! (on a server, when the connection ends and its last part has stopped).

use std::any::Any;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

/// The longest input name accepted, in bytes.
pub const MAX_INPUT_NAME_BYTES: usize = 1024;

/// One input shared by every part of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedInput {
    /// A relative path inside the job's work folder, checked by [`check_input_name`].
    pub name: String,
    /// The content.
    pub bytes: Bytes,
    /// Whether the file is a program the job runs (its mode is then 0755, else 0644).
    pub executable: bool,
}

/// Checks that `name` is a relative path that stays inside the folder it is joined
/// to: no root, no `..`, no `.`, no empty component, no NUL, not too long. Everything
/// that writes an input to disk relies on it, on the client that reads a job file and on
/// the server that receives a name from the network.
pub fn check_input_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty file name".into());
    }
    if name.len() > MAX_INPUT_NAME_BYTES {
        return Err(format!(
            "a file name longer than {MAX_INPUT_NAME_BYTES} bytes"
        ));
    }
    if name.contains('\0') {
        return Err(format!("the file name {name:?} contains a NUL byte"));
    }
    let escapes = || {
        format!(
            "the file name {name:?} leaves the job's work folder: give a relative path \
             without `..`, `.` or a leading `/`"
        )
    };
    // Split by hand: `Path::components` drops interior `.` and empty components.
    if name
        .split('/')
        .any(|component| matches!(component, "" | "." | ".."))
    {
        return Err(escapes());
    }
    Ok(())
}

/// A job's shared inputs, as every part reads them. See the module documentation.
#[derive(Debug, Default)]
pub struct JobInputs {
    inputs: Vec<SharedInput>,
    /// The folder holding every input as a file, made by the first part that asks.
    work_dir: OnceLock<Result<tempfile::TempDir, String>>,
    /// What kernels made from the inputs once for every part ([`JobInputs::derived`]),
    /// one value per type.
    derived: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl JobInputs {
    /// The inputs of a job, checked: valid names, none twice, none inside another
    /// (`a` and `a/b`).
    pub fn new(inputs: Vec<SharedInput>) -> Result<JobInputs, String> {
        let mut names = BTreeSet::new();
        for input in &inputs {
            check_input_name(&input.name)?;
            if !names.insert(input.name.as_str()) {
                return Err(format!("the file {:?} is listed twice", input.name));
            }
        }
        // In sorted order, a name that is a folder of another comes right before one
        // of its files.
        let sorted: Vec<&str> = names.into_iter().collect();
        for pair in sorted.windows(2) {
            if pair[1]
                .strip_prefix(pair[0])
                .is_some_and(|rest| rest.starts_with('/'))
            {
                return Err(format!(
                    "{:?} is both a file and the folder of {:?}",
                    pair[0], pair[1]
                ));
            }
        }
        Ok(JobInputs {
            inputs,
            ..JobInputs::default()
        })
    }

    /// The inputs, in the order the job gave them.
    pub fn inputs(&self) -> &[SharedInput] {
        &self.inputs
    }

    /// The content of the input called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.inputs
            .iter()
            .find(|input| input.name == name)
            .map(|input| &input.bytes)
    }

    /// The total size of the inputs, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.inputs
            .iter()
            .map(|input| input.bytes.len() as u64)
            .sum()
    }

    /// A folder holding every input as a file, created on the first call (in the
    /// system's temporary folder) and removed when these inputs are dropped. Parts of
    /// the job computed here share it.
    pub fn work_dir(&self) -> Result<&Path, String> {
        self.work_dir
            .get_or_init(|| self.write_work_dir())
            .as_ref()
            .map(|dir| dir.path())
            .map_err(Clone::clone)
    }

    /// The value of type `T` that `make` derives from these inputs (a matrix packed
    /// for a kernel), made by the first part that asks and shared by every later one.
    /// Parts asking while it is being made wait for it rather than make it twice. If
    /// `make` fails (it was cancelled), nothing is kept, and the next part makes it.
    pub fn derived<T, E>(&self, make: impl FnOnce(&JobInputs) -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        // A part that panicked while making a value left nothing half-made behind.
        let mut derived = self.derived.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = derived
            .iter()
            .find_map(|value| Arc::clone(value).downcast::<T>().ok())
        {
            return Ok(value);
        }
        let value = Arc::new(make(self)?);
        derived.push(Arc::clone(&value) as Arc<dyn Any + Send + Sync>);
        Ok(value)
    }

    fn write_work_dir(&self) -> Result<tempfile::TempDir, String> {
        let dir = tempfile::Builder::new()
            .prefix("pool-job-")
            .tempdir()
            .map_err(|e| format!("cannot create a work folder for the job: {e}"))?;
        for input in &self.inputs {
            write_input(dir.path(), input).map_err(|e| {
                format!(
                    "cannot write {:?} into the job's work folder: {e}",
                    input.name
                )
            })?;
        }
        Ok(dir)
    }
}

/// Writes one input under `root`, creating its folders; never follows or replaces
/// anything already there.
fn write_input(root: &Path, input: &SharedInput) -> std::io::Result<()> {
    let path = root.join(&input.name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if input.executable { 0o755 } else { 0o644 });
    }
    let mut file = options.open(&path)?;
    file.write_all(&input.bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, content: &str) -> SharedInput {
        SharedInput {
            name: name.into(),
            bytes: Bytes::copy_from_slice(content.as_bytes()),
            executable: false,
        }
    }

    #[test]
    fn a_derived_value_is_made_once_and_not_kept_on_failure() {
        let inputs = JobInputs::new(vec![input("b", "abc")]).unwrap();
        let failed: Result<Arc<usize>, &str> = inputs.derived(|_| Err("cancelled"));
        assert_eq!(failed, Err("cancelled"));
        let mut made = 0;
        for _ in 0..3 {
            let len = inputs
                .derived::<usize, ()>(|inputs| {
                    made += 1;
                    Ok(inputs.get("b").unwrap().len())
                })
                .unwrap();
            assert_eq!(*len, 3);
        }
        assert_eq!(made, 1);
        // Another type is another value.
        let text = inputs.derived::<String, ()>(|_| Ok("x".into())).unwrap();
        assert_eq!(*text, "x");
    }

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a//b",
            "a/",
            "a/./b",
            "a\0b",
        ] {
            assert!(check_input_name(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["count.py", "lib/util.py", "a b/c.txt", "..hidden", "x.."] {
            check_input_name(good).unwrap();
        }
        assert!(check_input_name(&"a".repeat(MAX_INPUT_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn duplicate_and_nested_names_are_refused() {
        assert!(JobInputs::new(vec![input("a", ""), input("a", "")]).is_err());
        assert!(JobInputs::new(vec![input("lib/x", ""), input("lib", "")]).is_err());
        JobInputs::new(vec![
            input("lib", ""),
            input("lib2/x", ""),
            input("lib.py", ""),
        ])
        .unwrap();
    }

    #[test]
    fn the_work_dir_holds_the_inputs_and_goes_away_with_them() {
        let inputs = JobInputs::new(vec![
            input("count.py", "print(1)"),
            SharedInput {
                executable: true,
                ..input("bin/run", "#!/bin/sh")
            },
        ])
        .unwrap();
        let dir = inputs.work_dir().unwrap().to_path_buf();
        assert_eq!(inputs.work_dir().unwrap(), dir, "made once");
        assert_eq!(
            std::fs::read_to_string(dir.join("count.py")).unwrap(),
            "print(1)"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |name: &str| {
                std::fs::metadata(dir.join(name))
                    .unwrap()
                    .permissions()
                    .mode()
            };
            assert_eq!(mode("bin/run") & 0o777, 0o755);
            assert_eq!(mode("count.py") & 0o777, 0o644);
        }
        drop(inputs);
        assert!(!dir.exists());
    }
}

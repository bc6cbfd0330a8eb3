//! A tiny command-line parser: `--flag`, `--flag value` and `--flag=value`.

use crate::util::{fail, Result};

/// The arguments of a subcommand, consumed flag by flag.
#[derive(Debug)]
pub(crate) struct Args {
    items: std::vec::IntoIter<String>,
    /// The value of the last `--flag=value`, until [`Args::value`] takes it.
    inline_value: Option<(String, String)>,
}

impl Args {
    /// Wraps the arguments after the subcommand name.
    pub(crate) fn new(items: Vec<String>) -> Self {
        Self {
            items: items.into_iter(),
            inline_value: None,
        }
    }

    /// The next `--flag`, or `None` at the end. A positional argument, or an
    /// `=value` given to a flag that takes none, is an error.
    pub(crate) fn next_flag(&mut self) -> Result<Option<String>> {
        if let Some((flag, _)) = self.inline_value.take() {
            return fail(format!("option `{flag}` takes no value"));
        }
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        if !item.starts_with("--") {
            return fail(format!("unexpected argument `{item}` (see `cargo xtask help`)"));
        }
        match item.split_once('=') {
            Some((flag, value)) => {
                self.inline_value = Some((flag.to_owned(), value.to_owned()));
                Ok(Some(flag.to_owned()))
            }
            None => Ok(Some(item)),
        }
    }

    /// The value of `flag`: its `=value`, or the next argument.
    pub(crate) fn value(&mut self, flag: &str) -> Result<String> {
        if let Some((_, value)) = self.inline_value.take() {
            return Ok(value);
        }
        match self.items.as_slice().first() {
            Some(next) if !next.starts_with("--") => Ok(self.items.next().unwrap_or_default()),
            _ => fail(format!("{flag} needs a value")),
        }
    }

    /// The error for an option the subcommand does not know.
    pub(crate) fn unknown<T>(&self, flag: &str) -> Result<T> {
        fail(format!("unknown option `{flag}` (see `cargo xtask help`)"))
    }
}

/// A comma-separated list (`a,b`) of non-empty names.
pub(crate) fn split_list(value: &str, flag: &str) -> Result<Vec<String>> {
    let names: Vec<String> = value.split(',').map(|name| name.trim().to_owned()).collect();
    if names.iter().any(String::is_empty) {
        return fail(format!(
            "{flag}: empty name in `{value}` (expected a comma-separated list)"
        ));
    }
    Ok(names)
}

/// A positive integer option value.
pub(crate) fn positive(value: &str, flag: &str) -> Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(0) => fail(format!("{flag} must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => fail(format!("{flag} expects a positive integer, got `{value}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(|w| (*w).to_owned()).collect())
    }

    #[test]
    fn flags_and_values() -> Result<()> {
        let mut a = args(&["--a", "1", "--b=2", "--c"]);
        assert_eq!(a.next_flag()?.as_deref(), Some("--a"));
        assert_eq!(a.value("--a")?, "1");
        assert_eq!(a.next_flag()?.as_deref(), Some("--b"));
        assert_eq!(a.value("--b")?, "2");
        assert_eq!(a.next_flag()?.as_deref(), Some("--c"));
        assert!(a.value("--c").is_err());
        assert_eq!(a.next_flag()?, None);
        Ok(())
    }

    #[test]
    fn rejects_positionals_and_stray_values() -> Result<()> {
        assert!(args(&["x"]).next_flag().is_err());
        let mut a = args(&["--flag=1"]);
        assert_eq!(a.next_flag()?.as_deref(), Some("--flag"));
        assert!(a.next_flag().is_err());
        Ok(())
    }

    #[test]
    fn numbers_and_lists() {
        assert_eq!(positive("12", "--n").ok(), Some(12));
        assert!(positive("0", "--n").is_err());
        assert!(positive("-3", "--n").is_err());
        assert!(positive("1e3", "--n").is_err());
        assert_eq!(
            split_list("a, b", "--x").ok(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(split_list("a,,b", "--x").is_err());
    }
}

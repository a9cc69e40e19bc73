//! Words for messages people read.

/// `n` and the noun that goes with it: `1 worker`, `2 workers`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(counted(1, "worker", "workers"), "1 worker");
        assert_eq!(counted(0, "copy", "copies"), "0 copies");
        assert_eq!(counted(3, "part", "parts"), "3 parts");
    }
}

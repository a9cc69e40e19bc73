//! Slurm's host-list expressions, as in `SLURM_JOB_NODELIST`: `node[01-04,07],gpu3` is
//! node01, node02, node03, node04, node07 and gpu3.
//!
//! The syntax, from Slurm's documentation (`scontrol show hostnames`, "HOSTLIST
//! EXPRESSIONS" in `man scontrol`):
//!
//! * Host names are separated by commas: `a,b,c`.
//! * A bracketed list of numbers and ranges stands for each of them in turn:
//!   `tux[1,3-5]` is tux1, tux3, tux4, tux5.
//! * A range keeps its lower bound's leading zeros: `lx[08-10]` is lx08, lx09, lx10.
//! * Several bracketed lists in one name, or text after one, combine in order, the last
//!   varying fastest: `rack[1-2]n[1-2]` is rack1n1, rack1n2, rack2n1, rack2n2.

/// The most host names one expression may expand to: more than any cluster has, and a
/// bound on what a mistyped range (`node[1-99999999]`) can allocate.
pub const MAX_HOSTS: usize = 100_000;

/// The host names `expression` stands for, in order, or what is wrong with it.
pub fn expand(expression: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for name in split_top_level(expression)? {
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "{expression:?}: an empty host name (two commas in a row, or one at an end)"
            ));
        }
        let mut expanded = vec![String::new()];
        for piece in pieces(name) {
            let choices = match piece {
                Piece::Text(text) => vec![text.to_string()],
                Piece::Brackets(list) => numbers(list)
                    .map_err(|problem| format!("{expression:?}: in [{list}]: {problem}"))?,
            };
            if expanded.len().saturating_mul(choices.len()) + hosts.len() > MAX_HOSTS {
                return Err(format!(
                    "{expression:?} names more than {MAX_HOSTS} hosts: check its ranges"
                ));
            }
            expanded = expanded
                .iter()
                .flat_map(|prefix| choices.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
        }
        hosts.extend(expanded);
    }
    Ok(hosts)
}

/// The expression's host names, split at the commas outside brackets.
fn split_top_level(expression: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (at, c) in expression.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(format!("{expression:?}: brackets inside brackets")),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(format!("{expression:?}: a `]` without its `[`")),
            ',' if depth == 0 => {
                names.push(&expression[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{expression:?}: a `[` without its `]`"));
    }
    names.push(&expression[start..]);
    Ok(names)
}

/// Part of one host name: plain text, or the inside of a bracketed list.
enum Piece<'a> {
    Text(&'a str),
    Brackets(&'a str),
}

/// A host name (already checked for balanced brackets) cut into text and lists.
fn pieces(name: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let close = open + rest[open..].find(']').expect("brackets were checked");
        pieces.push(Piece::Brackets(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

/// The numbers a bracketed list stands for, as text with their padding: `01-03,7` is
/// 01, 02, 03, 7.
fn numbers(list: &str) -> Result<Vec<String>, String> {
    let mut numbers = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let (low, high) = item.split_once('-').unwrap_or((item, item));
        let parse = |digits: &str| -> Result<u64, String> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{item:?} is not a number or a range like 1-4 or 01-04"
                ));
            }
            digits
                .parse()
                .map_err(|_| format!("{digits} is too large a host number"))
        };
        let (from, to) = (parse(low)?, parse(high)?);
        if from > to {
            return Err(format!("the range {item} runs backwards"));
        }
        if (to - from) as usize >= MAX_HOSTS {
            return Err(format!(
                "the range {item} names more than {MAX_HOSTS} hosts"
            ));
        }
        let width = if low.starts_with('0') { low.len() } else { 0 };
        numbers.extend((from..=to).map(|n| format!("{n:0width$}")));
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(expression: &str) -> Vec<String> {
        expand(expression).unwrap()
    }

    #[test]
    fn the_documented_forms_expand_in_order() {
        // The examples of Slurm's own documentation (man scontrol, sbatch's --nodelist).
        assert_eq!(hosts("tux[1,3-5]"), ["tux1", "tux3", "tux4", "tux5"]);
        assert_eq!(
            hosts("node[01-04,07],gpu3"),
            ["node01", "node02", "node03", "node04", "node07", "gpu3"]
        );
        assert_eq!(hosts("lx[08-10]"), ["lx08", "lx09", "lx10"]);
        assert_eq!(hosts("lx[8-10]"), ["lx8", "lx9", "lx10"]);
        assert_eq!(hosts("alpha,beta,gamma"), ["alpha", "beta", "gamma"]);
        assert_eq!(hosts("single"), ["single"]);
        assert_eq!(
            hosts("rack[1-2]n[1-2]"),
            ["rack1n1", "rack1n2", "rack2n1", "rack2n2"]
        );
        assert_eq!(hosts("c[1-2]-ib"), ["c1-ib", "c2-ib"]);
        assert_eq!(hosts("[1-2]x"), ["1x", "2x"]);
        assert_eq!(hosts("n[007]"), ["n007"]);
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let error = |e: &str| expand(e).unwrap_err();
        assert!(error("node[1-4").contains("without its `]`"));
        assert!(error("node1-4]").contains("without its `[`"));
        assert!(error("node[[1]]").contains("inside brackets"));
        assert!(error("node[4-1]").contains("runs backwards"));
        assert!(error("node[a-b]").contains("is not a number"));
        assert!(error("node[]").contains("is not a number"));
        assert!(error("a,,b").contains("empty host name"));
        assert!(error("").contains("empty host name"));
        assert!(error("n[1-99999999]").contains("more than 100000 hosts"));
        assert!(error("n[1-1000]m[1-1000]").contains("more than 100000 hosts"));
    }
}

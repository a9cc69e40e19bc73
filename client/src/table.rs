//! A table of text cells and its three renderings: aligned columns for a terminal, a
//! Markdown table, and a LaTeX (booktabs) table, so that what a report pastes is the
//! table as it printed.

use std::fmt::Write as _;

/// Rows of cells under a header; the first `left` columns are names (aligned left),
/// the others figures (aligned right).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The column titles.
    pub header: Vec<String>,
    /// The rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
    /// How many leading columns are aligned left.
    pub left: usize,
}

impl Table {
    /// A table with `header` and no rows yet.
    pub fn new(header: &[&str], left: usize) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            left,
        }
    }

    /// Adds a row; it must have a cell per column.
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.header.len(), "a cell per column");
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Aligned columns, two spaces apart, one line per row.
    pub fn text(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (c, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                if c < self.left {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }

    /// A Markdown (GitHub) table: `|` between cells, escaped where a cell holds one.
    pub fn markdown(&self) -> String {
        let cells = |row: &[String]| {
            row.iter()
                .map(|cell| cell.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let rule = (0..self.header.len())
            .map(|c| if c < self.left { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join(" | ");
        let mut out = format!("| {} |\n| {rule} |\n", cells(&self.header));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", cells(row));
        }
        out
    }

    /// A LaTeX `table` with a booktabs `tabular` (`\usepackage{booktabs}`) and
    /// `caption` under it.
    pub fn latex(&self, caption: &str) -> String {
        let spec: String = (0..self.header.len())
            .map(|c| if c < self.left { 'l' } else { 'r' })
            .collect();
        let row = |cells: &[String]| {
            cells
                .iter()
                .map(|cell| latex_escape(cell))
                .collect::<Vec<_>>()
                .join(" & ")
                + " \\\\"
        };
        let mut out = String::from("\\begin{table}[ht]\n\\centering\n");
        let _ = writeln!(out, "\\begin{{tabular}}{{{spec}}}");
        out.push_str("\\toprule\n");
        let _ = writeln!(out, "{}", row(&self.header));
        out.push_str("\\midrule\n");
        for cells in &self.rows {
            let _ = writeln!(out, "{}", row(cells));
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        let _ = writeln!(out, "\\caption{{{}}}", latex_escape(caption));
        out.push_str("\\end{table}\n");
        out
    }
}

/// Text as LaTeX typesets it literally: its special characters escaped (`|`, `<` and
/// `>` by name, which the default font encoding would turn into other glyphs), and `µ`
/// and `±` in math mode, so no package beyond booktabs is needed.
pub fn latex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '|' => out.push_str("\\textbar{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            'µ' | 'μ' => out.push_str("$\\mu$"),
            '±' => out.push_str("$\\pm$"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::new(&["mode", "elapsed"], 1);
        table.push(vec!["a_b | c".into(), "12 µs".into()]);
        table.push(vec!["pool (3 servers)".into(), "100%".into()]);
        table
    }

    #[test]
    fn text_aligns_names_left_and_figures_right() {
        assert_eq!(
            sample().text(),
            "mode              elapsed\na_b | c             12 µs\npool (3 servers)     100%\n"
        );
    }

    #[test]
    fn markdown_escapes_bars_and_aligns_figures_right() {
        assert_eq!(
            sample().markdown(),
            "| mode | elapsed |\n| --- | ---: |\n| a_b \\| c | 12 µs |\n| pool (3 servers) | 100% |\n"
        );
    }

    #[test]
    fn latex_escapes_what_latex_would_read_as_commands() {
        assert_eq!(
            latex_escape("50% of a_b & c # {x} $1 ~ ^ \\ 3 µs ± 1"),
            "50\\% of a\\_b \\& c \\# \\{x\\} \\$1 \\textasciitilde{} \\textasciicircum{} \\textbackslash{} 3 $\\mu$s $\\pm$ 1"
        );
        let latex = sample().latex("job: loop_sum, 100%");
        assert!(latex.contains("\\begin{tabular}{lr}\n\\toprule\nmode & elapsed \\\\\n\\midrule\n"));
        assert!(latex.contains("a\\_b \\textbar{} c & 12 $\\mu$s \\\\"));
        assert!(latex.contains("\\caption{job: loop\\_sum, 100\\%}"));
    }
}

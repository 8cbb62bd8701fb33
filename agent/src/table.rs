//! Aligned text tables for the CLI's human output (`--json` is for
//! scripts).

use std::fmt::Write as _;

/// A table: a header row and data rows, printed with columns padded to
/// their widest cell and separated by three spaces (the last column is not
/// padded, so lines carry no trailing blanks).
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rendered table, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == n {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}   ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        let mut t = Table::new(&["NAME", "STATE", "NOTE"]);
        t.row(vec!["a".into(), "running".into(), "".into()]);
        t.row(vec!["longer-name".into(), "up".into(), "x y".into()]);
        assert_eq!(
            t.render(),
            "NAME          STATE     NOTE\n\
             a             running\n\
             longer-name   up        x y\n"
        );
    }
}

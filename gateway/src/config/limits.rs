//! Cheap limits checked before a configuration file reaches the YAML parser (a hostile or broken
//! file must be refused in milliseconds, at start-up and on SIGHUP alike).
//!
//! - Size: at most [`MAX_CONFIG_BYTES`].
//! - Nesting: at most [`MAX_NESTING_DEPTH`] levels. libyaml (under `serde_norway`) checks every
//!   open flow level (`[`, `{`) on every token, so parsing is quadratic in flow depth: 100,000
//!   nested `[` took 35 s before `serde_norway`'s own recursion limit (128) could refuse them.
//!   [`check_nesting`] is a linear pre-scan that counts flow brackets and block nesting
//!   (indentation, `- ` and `? ` indicators, keys) while skipping comments, quoted scalars, plain
//!   scalars and block scalars, so an ordinary config (depth < 10) is never refused.
//! - Nodes: at most [`MAX_NODES`] values once aliases are expanded. `serde_norway` bounds alias
//!   *jumps* (100 × the number of events) but not what they expand to, so a "billion laughs"
//!   file of a few hundred bytes (nine anchors of nine aliases each) would build hundreds of
//!   millions of values. The document is therefore built by a counting seed
//!   ([`super::value_with_budget`]) that stops at the budget.

/// Largest configuration file accepted, in bytes (1 MiB; the shipped files are ~3 KiB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted (flow collections plus block levels; the shipped files reach 6).
pub const MAX_NESTING_DEPTH: usize = 64;

/// Most YAML values (scalars, sequences, mappings, keys included) a document may expand to.
pub const MAX_NODES: usize = 100_000;

/// Where nesting first went past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (bytes).
    pub column: usize,
}

/// A multi-line construct the next line continues.
#[derive(Debug, Clone, Copy)]
enum Carry {
    /// Nothing: the next line starts fresh.
    None,
    /// Inside a single- or double-quoted scalar.
    Quote(u8),
    /// Inside a block scalar (`|`, `>`) whose parent block node is at column `parent`
    /// (-1 at the top level); `indent` is the content indentation once the first non-blank line
    /// fixed it.
    BlockScalar {
        parent: isize,
        indent: Option<usize>,
    },
    /// After a plain scalar in block context that reached the end of its line: lines indented
    /// more than `parent` continue it as text (`a: b` / `  'c [[` is the scalar "b 'c [[").
    Plain { parent: isize },
}

/// One open flow collection.
#[derive(Debug, Clone, Copy)]
struct FlowLevel {
    /// `[` (else `{`).
    seq: bool,
    /// The current entry of this sequence is a single-pair mapping (a `:` or `?` indicator was
    /// seen in it): one level more, until `,` or `]`.
    pair: bool,
    /// The deepest [`Scanner::depth`] reached inside the current entry so far. A `:` seen after
    /// a flow collection (`[[a, b]: c]`) makes that collection the key of a pair mapping: it was
    /// one level deeper than counted while it was open.
    entry_peak: usize,
}

/// What opened a block level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A mapping key (or `?`/`:` indicator) at that column.
    Key,
    /// A `- ` sequence entry at that column.
    Dash,
}

/// The pre-scan's state across lines.
struct Scanner {
    limit: usize,
    /// Open flow collections, innermost last.
    flow: Vec<FlowLevel>,
    /// The open block collections: column and kind, columns increasing (equal only for a
    /// sequence written at its parent key's column).
    block: Vec<(usize, Kind)>,
    carry: Carry,
    /// In flow context: the next non-blank character starts a node (after `[`, `{`, `,`, `?`,
    /// `:`), so a quote there opens a quoted scalar and `&`/`!`/`*` start properties/aliases.
    flow_node_start: bool,
}

/// Checks that `text` nests at most `limit` levels; returns where it first went deeper.
///
/// Counts `[`/`{` that open flow collections (not inside quotes, comments or plain scalars) plus
/// the block levels open at that point. Block levels are the indentation columns of `- `
/// entries and of mapping keys (a sequence written at its parent key's column is a level of its
/// own, as it is for libyaml), so for a document without aliases the count is at least the depth
/// of the tree libyaml builds (the config fuzz target checks this), and more only for invalid
/// YAML. Lines end where libyaml ends them (LF, CR, CRLF, NEL, LS, PS): a scan that split
/// only at LF would take `# x<CR>[[[[...` for one comment line. Linear in the length of `text`.
pub fn check_nesting(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut s = Scanner {
        limit,
        flow: Vec::new(),
        block: Vec::new(),
        carry: Carry::None,
        flow_node_start: true,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).as_bytes();
    let mut line_no = 0;
    let mut start = 0;
    let mut i = 0;
    loop {
        let break_len = match text.get(i) {
            None => 0,
            Some(b'\n') => 1,
            Some(b'\r') if text.get(i + 1) == Some(&b'\n') => 2,
            Some(b'\r') => 1,
            // NEL
            Some(0xC2) if text.get(i + 1) == Some(&0x85) => 2,
            // LS, PS
            Some(0xE2)
                if text.get(i + 1) == Some(&0x80)
                    && matches!(text.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                3
            }
            Some(_) => {
                i += 1;
                continue;
            }
        };
        line_no += 1;
        s.line(&text[start..i]).map_err(|col| TooDeep {
            line: line_no,
            column: col + 1,
        })?;
        if break_len == 0 {
            return Ok(());
        }
        i += break_len;
        start = i;
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A character of an anchor or alias name, as libyaml scans them.
fn is_anchor_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

/// Whether `line[i]` is followed by a blank or the end of the line.
fn blank_after(line: &[u8], i: usize) -> bool {
    line.get(i + 1).is_none_or(|&b| is_blank(b))
}

impl Scanner {
    fn depth(&self) -> usize {
        self.block.len()
            + self
                .flow
                .iter()
                .map(|f| 1 + usize::from(f.pair))
                .sum::<usize>()
    }

    /// Column of the innermost open block collection (-1 at the top level).
    fn block_indent(&self) -> isize {
        self.block.last().map_or(-1, |&(c, _)| c as isize)
    }

    /// Opens a block level at `col` unless it continues the innermost one: deeper than it, or
    /// a sequence at the column of the key it belongs to.
    fn push_block(&mut self, col: usize, kind: Kind) -> Result<(), usize> {
        let opens = match self.block.last() {
            None => true,
            Some(&(top, top_kind)) => {
                col > top || (col == top && kind == Kind::Dash && top_kind == Kind::Key)
            }
        };
        if opens {
            self.block.push((col, kind));
            if self.depth() > self.limit {
                return Err(col);
            }
        }
        Ok(())
    }

    fn open_flow(&mut self, col: usize, opener: u8) -> Result<(), usize> {
        let depth = self.depth() + 1;
        for level in &mut self.flow {
            level.entry_peak = level.entry_peak.max(depth);
        }
        self.flow.push(FlowLevel {
            seq: opener == b'[',
            pair: false,
            entry_peak: depth,
        });
        self.flow_node_start = true;
        if depth > self.limit {
            return Err(col);
        }
        Ok(())
    }

    /// Scans one line (without its line break). `Err(column)` when the limit was exceeded.
    fn line(&mut self, line: &[u8]) -> Result<(), usize> {
        let mut i = 0;
        match self.carry {
            Carry::BlockScalar { parent, indent } => {
                let spaces = line.iter().take_while(|&&b| b == b' ').count();
                if line[spaces..].iter().all(|&b| is_blank(b)) {
                    return Ok(()); // blank lines belong to the scalar
                }
                let inside = match indent {
                    Some(n) => spaces >= n,
                    None => spaces as isize > parent,
                };
                if inside {
                    if indent.is_none() {
                        self.carry = Carry::BlockScalar {
                            parent,
                            indent: Some(spaces),
                        };
                    }
                    return Ok(());
                }
                self.carry = Carry::None;
            }
            Carry::Quote(q) => match close_quote(line, 0, q) {
                Some(end) => {
                    self.carry = Carry::None;
                    i = end;
                    // A scalar just ended: what follows is not a node start.
                    self.flow_node_start = false;
                    return self.rest(line, i, false);
                }
                None => return Ok(()),
            },
            Carry::Plain { parent } => {
                let spaces = line.iter().take_while(|&&b| b == b' ').count();
                if line[spaces..].iter().all(|&b| is_blank(b)) {
                    return Ok(()); // blank lines fold into the scalar
                }
                self.carry = Carry::None;
                if spaces as isize > parent {
                    return self.plain_continuation(line, spaces);
                }
            }
            Carry::None => {}
        }
        if !self.flow.is_empty() {
            return self.rest(line, 0, self.flow_node_start);
        }
        // Block context: indentation decides which block levels are still open.
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let content = &line[indent..];
        if content.iter().all(|&b| is_blank(b)) || content.first() == Some(&b'#') {
            return Ok(()); // blank or comment line
        }
        if indent == 0 {
            if content.starts_with(b"%") {
                return Ok(()); // directive
            }
            if content.starts_with(b"---") && blank_after(content, 2) {
                self.block.clear();
                return self.rest(line, 3, true);
            }
            if content.starts_with(b"...") && blank_after(content, 2) {
                self.block.clear();
                return Ok(());
            }
        }
        while self.block.last().is_some_and(|&(top, _)| top > indent) {
            self.block.pop();
        }
        // A sequence at its key's column ends at the first line there that is not an entry.
        let entry = content[0] == b'-' && blank_after(content, 0);
        if !entry && self.block.last() == Some(&(indent, Kind::Dash)) && self.block.len() >= 2 {
            let below = self.block[self.block.len() - 2];
            if below == (indent, Kind::Key) {
                self.block.pop();
            }
        }
        i += indent;
        self.rest(line, i, true)
    }

    /// Scans `line[i..]`; `node_start`: a node may begin at the next non-blank character.
    fn rest(&mut self, line: &[u8], mut i: usize, mut node_start: bool) -> Result<(), usize> {
        // Column of a flow collection opened on this line in block context: if `: ` follows its
        // end, it was a mapping key (`[a, b]: c`) and the mapping is a block level.
        let mut flow_at = None;
        // Column of the anchor or tag that began the node being scanned: a key that turns out to
        // follow them (`&a key: v`, `&a: v`) starts there, not at its text, and that column is
        // what later lines' indentation is compared with.
        let mut props_at: Option<usize> = None;
        while i < line.len() {
            let b = line[i];
            if is_blank(b) {
                i += 1;
                continue;
            }
            // A comment starts at `#` after a blank or at the start of the line.
            if b == b'#' && (i == 0 || is_blank(line[i - 1])) {
                return Ok(());
            }
            if !self.flow.is_empty() {
                i = self.flow_token(line, i)?;
                if self.flow.is_empty() {
                    // The outermost flow collection closed: a complete node.
                    node_start = false;
                    if let Some(col) = flow_at.take() {
                        if self.key_follows(line, &mut i) {
                            self.push_block(col, Kind::Key)?;
                            node_start = true;
                        }
                    }
                }
                continue;
            }
            // Block context.
            if !node_start {
                // After a complete node on this line, only a key indicator or a comment may
                // follow; anything else is invalid YAML that libyaml refuses at once.
                if b == b':' && blank_after(line, i) {
                    node_start = true;
                }
                i += 1;
                continue;
            }
            match b {
                b'-' | b'?' | b':' if blank_after(line, i) => {
                    let kind = if b == b'-' { Kind::Dash } else { Kind::Key };
                    // `&a: v`: an empty key with an anchor, starting at the anchor.
                    let col = props_at.take().filter(|_| b == b':');
                    self.push_block(col.unwrap_or(i), kind)?;
                    i += 1;
                }
                b'[' | b'{' => {
                    flow_at = Some(props_at.take().unwrap_or(i));
                    self.open_flow(i, b)?;
                    i += 1;
                }
                b'\'' | b'"' => {
                    let start = props_at.take().unwrap_or(i);
                    match close_quote(line, i + 1, b) {
                        Some(end) => {
                            i = end;
                            node_start = false;
                            if self.key_follows(line, &mut i) {
                                self.push_block(start, Kind::Key)?;
                                node_start = true;
                            }
                        }
                        None => {
                            self.carry = Carry::Quote(b);
                            return Ok(());
                        }
                    }
                }
                b'|' | b'>' => {
                    // libyaml wants block scalar content indented at least one column, also
                    // at the top level.
                    let parent = self.block_indent().max(0);
                    self.carry = Carry::BlockScalar {
                        parent,
                        indent: None,
                    };
                    return Ok(()); // the header and its comment end the line
                }
                b'&' => {
                    // Anchor: a node still follows. Its name is what libyaml takes for one
                    // (letters, digits, `-`, `_`): in `&a: v` the `:` is a key indicator.
                    props_at.get_or_insert(i);
                    i += 1;
                    while i < line.len() && is_anchor_char(line[i]) {
                        i += 1;
                    }
                }
                b'!' => {
                    // Tag (its characters include `:`): a node still follows.
                    props_at.get_or_insert(i);
                    while i < line.len() && !is_blank(line[i]) {
                        i += 1;
                    }
                }
                _ => {
                    // A plain scalar (or alias): up to `: `, ` #` or the end of the line.
                    let start = props_at.take().unwrap_or(i);
                    while i < line.len() {
                        let c = line[i];
                        if c == b':' && blank_after(line, i) {
                            break;
                        }
                        if c == b'#' && is_blank(line[i - 1]) {
                            break;
                        }
                        i += 1;
                    }
                    node_start = false;
                    if self.key_follows(line, &mut i) {
                        self.push_block(start, Kind::Key)?;
                        node_start = true;
                    } else if i == line.len() && b != b'*' {
                        // The scalar may go on over the next, more indented lines.
                        self.carry = Carry::Plain {
                            parent: self.block_indent(),
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// A line continuing a multi-line plain scalar (its indentation is `indent`): text up to
    /// ` #` (a comment ends the scalar) or the end of the line (it may go on). A `: ` in it is
    /// an error for libyaml; the rest of the line is then scanned as structure, to be safe.
    fn plain_continuation(&mut self, line: &[u8], indent: usize) -> Result<(), usize> {
        let mut i = indent;
        while i < line.len() {
            let c = line[i];
            if c == b'#' && (i == 0 || is_blank(line[i - 1])) {
                return Ok(());
            }
            if c == b':' && blank_after(line, i) {
                return self.rest(line, i + 1, true);
            }
            i += 1;
        }
        self.carry = Carry::Plain {
            parent: self.block_indent(),
        };
        Ok(())
    }

    /// After a scalar ending before `line[*i]`: whether `:` + blank follows (so the scalar was a
    /// key); moves past the `:` if so.
    fn key_follows(&self, line: &[u8], i: &mut usize) -> bool {
        let mut j = *i;
        while j < line.len() && is_blank(line[j]) {
            j += 1;
        }
        if j < line.len() && line[j] == b':' && blank_after(line, j) {
            *i = j + 1;
            true
        } else {
            false
        }
    }

    /// A `?` or `:` indicator at column `col` in flow context: inside a flow sequence it makes
    /// the entry a single-pair mapping (`[a: b]` is a sequence holding the mapping `{a: b}`), one
    /// level deeper until the entry ends.
    fn flow_pair(&mut self, col: usize) -> Result<(), usize> {
        if let Some(level) = self.flow.last_mut() {
            if level.seq && !level.pair {
                level.pair = true;
                // What the entry held so far is now the key: one level deeper.
                let key_depth = level.entry_peak + 1;
                if self.depth().max(key_depth) > self.limit {
                    return Err(col);
                }
            }
        }
        Ok(())
    }

    /// One token in flow context starting at the non-blank `line[i]`; returns where to go on.
    fn flow_token(&mut self, line: &[u8], mut i: usize) -> Result<usize, usize> {
        let b = line[i];
        match b {
            b'[' | b'{' => {
                self.open_flow(i, b)?;
                return Ok(i + 1);
            }
            b']' | b'}' => {
                self.flow.pop();
                self.flow_node_start = false;
                // JSON-like key: a `:` right after a flow collection is an indicator.
                if !self.flow.is_empty() && line.get(i + 1) == Some(&b':') {
                    self.flow_pair(i + 1)?;
                    self.flow_node_start = true;
                    return Ok(i + 2);
                }
                return Ok(i + 1);
            }
            b',' => {
                if let Some(level) = self.flow.last_mut() {
                    level.pair = false;
                }
                let depth = self.depth();
                if let Some(level) = self.flow.last_mut() {
                    level.entry_peak = depth;
                }
                self.flow_node_start = true;
                return Ok(i + 1);
            }
            _ => {}
        }
        // libyaml takes a `?` starting a token in flow context for the key indicator whatever
        // follows it (`[?a]` holds the mapping `{a: null}`); a `:` only before a blank or an
        // indicator.
        if b == b'?'
            || (b == b':'
                && line
                    .get(i + 1)
                    .is_none_or(|&c| is_blank(c) || is_flow_indicator(c)))
        {
            self.flow_pair(i)?;
            self.flow_node_start = true;
            return Ok(i + 1);
        }
        if self.flow_node_start && (b == b'\'' || b == b'"') {
            return match close_quote(line, i + 1, b) {
                Some(end) => {
                    self.flow_node_start = false;
                    // JSON-like `"key":value`: a `:` right after a quoted key is an indicator.
                    if line.get(end) == Some(&b':') {
                        self.flow_pair(end)?;
                        self.flow_node_start = true;
                        Ok(end + 1)
                    } else {
                        Ok(end)
                    }
                }
                None => {
                    self.carry = Carry::Quote(b);
                    Ok(line.len())
                }
            };
        }
        if self.flow_node_start && b == b'&' {
            // Anchor: a node still follows; its name ends where libyaml ends it (`[&a: b]`
            // holds a pair).
            i += 1;
            while i < line.len() && is_anchor_char(line[i]) {
                i += 1;
            }
            return Ok(i);
        }
        if self.flow_node_start && b == b'!' {
            // Tag: a node still follows.
            while i < line.len() && !is_blank(line[i]) && !is_flow_indicator(line[i]) {
                i += 1;
            }
            return Ok(i);
        }
        // A plain scalar or alias: up to a blank, a flow indicator or `:` + blank/indicator.
        self.flow_node_start = false;
        i += 1;
        while i < line.len() {
            let c = line[i];
            if is_blank(c) || is_flow_indicator(c) {
                break;
            }
            if c == b':'
                && line
                    .get(i + 1)
                    .is_none_or(|&n| is_blank(n) || is_flow_indicator(n))
            {
                break;
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Where a quoted scalar opened with `q` (before `line[from]`) closes: the index after the closing
/// quote, or `None` if it continues on the next line.
fn close_quote(line: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while i < line.len() {
        let b = line[i];
        if q == b'"' && b == b'\\' {
            i += 2;
            continue;
        }
        if b == q {
            if q == b'\'' && line.get(i + 1) == Some(&b'\'') {
                i += 2; // '' is an escaped quote
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, limit: usize) -> bool {
        check_nesting(text, limit).is_ok()
    }

    /// The smallest limit `text` passes.
    fn depth(text: &str) -> usize {
        (0..200).find(|&l| depth_ok(text, l)).unwrap()
    }

    #[test]
    fn flow_nesting_is_counted() {
        assert_eq!(depth("a: [[[1]]]\n"), 4);
        assert_eq!(depth("a: {b: {c: [1, {d: 2}]}}\n"), 5);
        assert_eq!(depth("[[\n[\n]]]\n"), 3);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            check_nesting(&deep, 64),
            Err(TooDeep {
                line: 1,
                column: 65
            })
        );
        let unclosed = "{a: ".repeat(50_000);
        assert!(check_nesting(&unclosed, 64).is_err());
    }

    /// `[a: b]` is a sequence holding a single-pair mapping: two levels, as libyaml builds it
    /// (found by the config fuzz target: `[[k: [[<<: 1]]]]` passed as 5 levels, libyaml built 7).
    #[test]
    fn single_pair_mappings_in_flow_sequences_are_a_level() {
        assert_eq!(depth("[a: 1]\n"), 2);
        assert_eq!(depth("[a: [b: [c: 1]]]\n"), 6);
        assert_eq!(depth("[a, b: [1], c]\n"), 3);
        assert_eq!(depth("[? a : 1]\n"), 2);
        assert_eq!(depth("[\"a\":1]\n"), 2);
        assert_eq!(depth("{a: [1], b: 2}\n"), 2);
        assert_eq!(depth("a#: [[1a:x#: [[<<: 1]]\r]]\r\n"), 7);
        let deep = "[a: ".repeat(40);
        assert!(check_nesting(&deep, 64).is_err());
        // A flow collection before the `:` is the pair's key: it was one level deeper than it
        // looked while open (found by the config fuzz target: `? [a, [a,8]:8]: d}` passed as 3
        // levels, libyaml built 5).
        assert_eq!(depth("[[a, 8]: 8]\n"), 3);
        assert_eq!(depth("[[a, 8] : 8]\n"), 3);
        assert_eq!(depth("[x, [[1]]: 8]\n"), 4);
        assert!(check_nesting("? [a, [a,8]:8]: d}\n", 3).is_err());
        assert_eq!(depth("[?a, 8]\n"), 2);
    }

    #[test]
    fn block_nesting_is_counted() {
        assert_eq!(depth("a:\n  b:\n    c: 1\n"), 3);
        assert_eq!(depth("- - - - x\n"), 4);
        assert_eq!(depth("a:\n  - b: 1\n    c: 2\n  - d\n"), 3);
        assert_eq!(depth("a:\n- b\n- c\n"), 2, "a sequence at its key's column");
        assert_eq!(depth("a:\n- b\n- c\nd: 1\n"), 2);
        assert_eq!(depth("a:\n- b:\n  - c: [1]\n"), 6);
        // ... ends at the next key there, so nothing accumulates.
        assert_eq!(depth("a:\n- 1\nb:\n- 2\nc:\n- 3\n"), 2);
        // A flow collection as a key opens a mapping level (after the key itself).
        assert_eq!(depth("k:\n  [a]:\n    [b]: [[1]]\n"), 5);
        let mut deep = String::new();
        for i in 0..100 {
            deep.push_str(&" ".repeat(i));
            deep.push_str("k:\n");
        }
        assert_eq!(depth(&deep), 100);
        let dashes = "- ".repeat(1000);
        assert!(check_nesting(&dashes, 64).is_err());
    }

    #[test]
    fn text_is_not_structure() {
        // Brackets in quotes, comments, plain scalars and block scalars.
        let text = "a: \"[[[[\" # [[[[\nb: '[[[['\nc: x[[[[\nd: |\n  [[[[\n  {{{{\ne: >-\n    [[[\n\n    [[\nf: 'it''s [['\ng: \"\\\"[[\"\n";
        assert_eq!(depth(text), 1);
        // A quoted scalar over several lines.
        assert_eq!(depth("a: \"x\n  [[[[\n  y\"\nb: 1\n"), 1);
        assert_eq!(depth("a: [\"x\n [[[[ \", 'y\n ]]]]']\n"), 2);
        // An apostrophe inside a plain scalar opens nothing.
        assert_eq!(depth("a: don't [\nb: [1]\n"), 2);
        assert_eq!(depth("a: [it's, 1]\nb: [2]\n"), 2);
        // `#` without a blank before it is not a comment.
        assert_eq!(depth("a: [x#y, [1]]\n"), 3);
    }

    #[test]
    fn every_libyaml_line_break_ends_a_line() {
        // Splitting only at LF would take each of these for one comment line.
        for br in ["\r", "\r\n", "\u{85}", "\u{2028}", "\u{2029}"] {
            let text = format!("# x{br}{}{}: 1\n", "[".repeat(100), "]".repeat(100));
            assert!(check_nesting(&text, 64).is_err(), "{br:?}");
            let text = format!("a: 1 # x{br}b: [[1]]{br}");
            assert_eq!(depth(&text), 3, "{br:?}");
        }
    }

    #[test]
    fn plain_scalars_go_on_over_indented_lines() {
        // `'x` continues the plain scalar `b` (it opens no quote), so `c` is a key again.
        let text = format!("a: b\n  'x\nc: {}\n  y'\n", "[".repeat(100));
        assert!(check_nesting(&text, 64).is_err());
        // Continuation lines are text, indicators included.
        assert_eq!(depth("a: b\n  - - - [[[ c\n  d\ne: 1\n"), 1);
        // Blank lines fold into the scalar; a dedent or a comment ends it.
        assert_eq!(depth("- a\n\n   [[[\n- [[1]]\n"), 3);
        assert_eq!(depth("a: b\n  # c\n  [[[1]]]\n"), 4);
        // A top-level scalar goes on at any indentation.
        assert_eq!(depth("word\n[[[[\n"), 0);
    }

    #[test]
    fn top_level_block_scalar_needs_indented_content() {
        // libyaml ends a top-level block scalar at column 0.
        assert!(check_nesting(&format!("--- |\n{}\n", "[".repeat(100)), 64).is_err());
        assert_eq!(depth("--- |\n [[[[\n"), 0);
    }

    #[test]
    fn block_scalar_ends_at_dedent() {
        // The scalar's content is at column 4; a key back at column 2 is structure again.
        let text = "a:\n  b: |\n    text\n  c: [[[1]]]\n";
        assert_eq!(depth(text), 5);
        // `- key: |` belongs to the mapping at column 2, so column 2 ends the scalar.
        let text = "- k: |\n    t\n  c: [[1]]\n";
        assert_eq!(depth(text), 4);
    }

    #[test]
    fn an_anchor_ends_where_libyaml_ends_it() {
        // Found by the config fuzz target: `&a:` is an anchored empty key, so the sequence
        // under it and the single-pair mappings in it are levels (libyaml builds 5).
        let text = "a:\n / 1a:\n ?\n 1a:\n  &a:\n   - &-Api-K0aut_ms_listen\n   - &-Api-K0a:\n   - &-Api-Kepi-K0a:\n   - &-Api-Ke";
        assert!(depth(text) >= 4, "counted {}", depth(text));
        // A key after an anchor starts at the anchor: the next line's indentation keeps it.
        assert_eq!(depth("&x key:\n  - a: b\n"), 3);
        assert_eq!(depth("[&a: b]"), 2);
    }

    #[test]
    fn shipped_configs_are_shallow() {
        for name in ["gateway.yaml", "gateway.local.yaml"] {
            let path = format!("{}/../conf/{name}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let d = depth(&text);
            assert!(d <= 8, "{name}: depth {d}");
        }
    }
}

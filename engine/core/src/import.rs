//! Bulk import of companies from a CSV file, as an MSP exports it from a spreadsheet or PSA.
//!
//! The file is untrusted: it may come from a technician's spreadsheet with the usual accidents
//! (semicolons for commas, a stray column, Windows line endings) or from an attacker (formula
//! injection, control characters, a 10 MB blob). Every row is checked before anything is kept, and
//! every problem is reported at once, by spreadsheet row and column, so a technician can fix the
//! file in one pass; the caller stores the companies only when there is no problem at all.
//!
//! Each row goes through [`normalize`] and [`validate`], so a company imported here obeys exactly
//! the rules of one entered through the API.

use std::collections::HashMap;
use std::fmt;

use serde_json::Map;
use steward_schemas::company::{PsaProvider, RmmProvider, UsernameFormat};
use steward_schemas::{
    Company, CompanyDefaults, CompanyId, IdentityProvider, MailboxProvider, Permissions, Profile,
    PsaLink, RmmLink,
};

use crate::company::{FieldProblem, normalize, validate};

/// One problem in the file, named by spreadsheet row (the header is row 1, the first company row 2) and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CellError {
    /// The row as a spreadsheet numbers it: blank lines count, and a cell that spans lines stays
    /// in one row, so the number matches what the technician sees when they open the file.
    pub row: usize,
    /// The column's header (`usage_location`); the column's letter (`U`) when its header is
    /// unusable; empty when the problem is the whole row or the whole file.
    pub column: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for CellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row)?;
        if !self.column.is_empty() {
            write!(f, ", column `{}`", self.column)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

/// The columns the file may have: (name, required, what it holds).
///
/// Published so the UI and the docs can show the template; the parser reads it too, so the two
/// cannot drift apart.
pub const COLUMNS: &[(&str, bool, &str)] = &[
    (
        "id",
        true,
        "the company's id: lowercase letters, digits and `-` (contoso, fabrikam-uk)",
    ),
    ("name", true, "the company's name"),
    (
        "tenant_id",
        false,
        "the Entra tenant id, a GUID; required unless identity_provider is on_prem_ad and mailbox_provider is exchange_server",
    ),
    (
        "identity_provider",
        true,
        "where its users live: entra_id, on_prem_ad, hybrid or hybrid_no_sync",
    ),
    (
        "mailbox_provider",
        true,
        "where its mailboxes live: exchange_online, exchange_server or exchange_hybrid",
    ),
    (
        "ad_runner",
        false,
        "the machine that runs AD scripts (a DC, or a runner with RSAT), as named in the RMM",
    ),
    (
        "entra_connect_server",
        false,
        "the Entra Connect server as named in the RMM (hybrid only)",
    ),
    (
        "exchange_server",
        false,
        "the Exchange server (exchange_server and exchange_hybrid only)",
    ),
    (
        "exchange_runner",
        false,
        "a runner that reaches the Exchange server by PowerShell remoting",
    ),
    (
        "rmm_provider",
        false,
        "datto, ninjaone or connectwise_automate; set together with rmm_site",
    ),
    (
        "rmm_site",
        false,
        "the company's site id in the RMM; set together with rmm_provider",
    ),
    (
        "psa_provider",
        false,
        "autotask, connectwise or halopsa; set together with psa_company_id",
    ),
    (
        "psa_company_id",
        false,
        "the company's id in the PSA; set together with psa_provider",
    ),
    (
        "upn_domain",
        false,
        "the UPN and mail domain of new users (contoso.com)",
    ),
    (
        "usage_location",
        false,
        "new users' usage location, a two-letter ISO 3166 code (GB)",
    ),
    (
        "ou",
        false,
        "the OU new AD users go to (OU=Users,OU=Contoso,DC=contoso,DC=local)",
    ),
    (
        "username_format",
        false,
        "first.last, flast, firstl, first, first_last or lastf",
    ),
    (
        "approvers",
        false,
        "emails of the technicians who approve gated steps, separated by `;`",
    ),
    (
        "permission_profile",
        false,
        "read_only (the default), helpdesk, it_admin or full_automation",
    ),
    (
        "custom_instructions",
        false,
        "free text shown to approvers and written to tickets; the one column that may span lines",
    ),
];

/// The most companies one file may hold.
pub const MAX_ROWS: usize = 10_000;

/// Longer cells are refused before any other work: no column needs more, and it bounds what a
/// hostile file can make us copy.
const MAX_CELL_CHARS: usize = 4_000;

/// Past this many, problems are only counted: nobody reads more, and a garbage file must not
/// produce a garbage-sized answer.
const MAX_ERRORS: usize = 1_000;

/// The one column whose cells may hold line breaks.
const MULTILINE_COLUMN: &str = "custom_instructions";

const FORMULA_FIX: &str = "start the text differently";

/// Parses and checks a whole file.
///
/// Returns every company, or every problem (at most 1,000, then one saying how many more), never
/// a mix: a file is imported whole or not at all. A UTF-8 byte-order mark, Windows line endings,
/// blank lines and rows left blank by a spreadsheet (`,,,`) are accepted.
///
/// The CSV cannot express per-group permission overrides (`permissions.groups`) or `settings`, so
/// they are left empty here; the store keeps a known company's existing values for those rather
/// than wiping them.
pub fn parse_companies_csv(input: &[u8]) -> Result<Vec<Company>, Vec<CellError>> {
    parse_companies_csv_rows(input).map(|rows| rows.into_iter().map(|(_, c)| c).collect())
}

/// [`parse_companies_csv`], with each company's spreadsheet row: for checks made afterwards
/// (approvers against the technicians) to name the row too.
pub fn parse_companies_csv_rows(input: &[u8]) -> Result<Vec<(usize, Company)>, Vec<CellError>> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut errors = Errors::default();
    let mut layout: Option<Layout> = None;
    let mut companies = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut rows = 0;
    let mut row = 0;
    let mut header_row = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // Reading from memory with `flexible` on, the reader has no error left to give; kept
            // so that a future csv version cannot turn one into a panic.
            Err(e) => {
                errors.push(CellError {
                    row: row + 1,
                    column: String::new(),
                    message: format!("the file cannot be read as CSV ({e})"),
                    fix: "save it again as CSV UTF-8 (comma delimited)".to_owned(),
                });
                break;
            }
        }
        let start = record
            .position()
            .and_then(|p| usize::try_from(p.byte()).ok())
            .unwrap_or(input.len());
        row += 1 + blank_lines_at(input, start);
        if record.iter().all(|cell| cell.trim_ascii().is_empty()) {
            continue;
        }
        let cells: Vec<&[u8]> = record.iter().collect();
        let Some(layout) = &layout else {
            match read_header(&cells, row, &mut errors) {
                Some(l) => {
                    layout = Some(l);
                    header_row = row;
                }
                None => return Err(errors.finish()),
            }
            continue;
        };
        rows += 1;
        if rows > MAX_ROWS {
            return Err(vec![CellError {
                row,
                column: String::new(),
                message: format!("the file holds more than {MAX_ROWS} companies"),
                fix: format!("split it into files of at most {MAX_ROWS} companies"),
            }]);
        }
        if let Some(company) = read_row(&cells, row, layout, &mut seen_ids, &mut errors) {
            companies.push((row, company));
        }
    }
    if layout.is_none() && errors.is_empty() {
        errors.push(CellError {
            row: 1,
            column: String::new(),
            message: "the file is empty: no companies".to_owned(),
            fix: format!(
                "start with a header row ({}) and add one row per company",
                required_columns().join(",")
            ),
        });
    } else if companies.is_empty() && errors.is_empty() {
        errors.push(CellError {
            row: header_row + 1,
            column: String::new(),
            message: "no companies: the file has a header and no rows under it".to_owned(),
            fix: "add one row per company under the header".to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(companies)
    } else {
        Err(errors.finish())
    }
}

/// The problems found so far, kept up to [`MAX_ERRORS`] and counted past it.
#[derive(Default)]
struct Errors {
    list: Vec<CellError>,
    more: usize,
    first_more_row: usize,
}

impl Errors {
    fn push(&mut self, e: CellError) {
        if self.list.len() < MAX_ERRORS {
            self.list.push(e);
        } else {
            if self.more == 0 {
                self.first_more_row = e.row;
            }
            self.more += 1;
        }
    }

    /// Whether a new problem would only be counted: then work done only to word it is skipped.
    fn is_full(&self) -> bool {
        self.list.len() >= MAX_ERRORS
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn count(&self) -> usize {
        self.list.len() + self.more
    }

    fn finish(mut self) -> Vec<CellError> {
        if self.more > 0 {
            self.list.push(CellError {
                row: self.first_more_row,
                column: String::new(),
                message: format!(
                    "{} more problems from this row on are not listed",
                    self.more
                ),
                fix: "fix the ones above and import the file again".to_owned(),
            });
        }
        self.list
    }
}

/// How many blank lines the reader skipped at byte `start` before the record it then read.
///
/// The csv crate skips blank lines silently and its line count lags behind `\r\n`, so the count
/// is taken from the bytes: a spreadsheet shows each blank line as a row, and row numbers must
/// match what the technician sees.
fn blank_lines_at(input: &[u8], start: usize) -> usize {
    let mut i = start;
    // The reader stops between the `\r` and `\n` of the previous record's line ending.
    if i > 0 && input.get(i - 1) == Some(&b'\r') && input.get(i) == Some(&b'\n') {
        i += 1;
    }
    let mut blank = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'\n' => blank += 1,
            b'\r' if input.get(i + 1) != Some(&b'\n') => blank += 1,
            b'\r' => {}
            _ => break,
        }
        i += 1;
    }
    blank
}

/// Where each known column is in the file.
struct Layout {
    /// For each cell position, the index in [`COLUMNS`] of its column, or `None` for a column
    /// without a header.
    by_cell: Vec<Option<usize>>,
    /// For each of [`COLUMNS`], its cell position, if the file has it.
    by_column: Vec<Option<usize>>,
}

impl Layout {
    fn new(by_cell: Vec<Option<usize>>) -> Self {
        let mut by_column = vec![None; COLUMNS.len()];
        for (pos, i) in by_cell.iter().enumerate() {
            if let Some(i) = i {
                by_column[*i] = Some(pos);
            }
        }
        Self { by_cell, by_column }
    }

    /// Where a known column is, to list a row's problems left to right. Constant time: a hostile
    /// row may have a million cells, each with a problem.
    fn at(&self, column: &str) -> Option<usize> {
        column_index(column).and_then(|i| self.by_column[i])
    }
}

fn column_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|(n, _, _)| *n == name)
}

fn required_columns() -> Vec<&'static str> {
    COLUMNS
        .iter()
        .filter(|(_, required, _)| *required)
        .map(|(n, _, _)| *n)
        .collect()
}

fn all_columns() -> String {
    COLUMNS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spreadsheet letter of a 0-based column position (`A`, `Z`, `AA`).
fn column_letter(pos: usize) -> String {
    let mut n = pos + 1;
    let mut letters = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(char::from(b'A' + u8::try_from(rem).unwrap_or(0)));
        n = (n - 1) / 26;
    }
    letters.iter().rev().collect()
}

/// A header cell as a column name: case and surrounding spaces do not matter.
fn header_name(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(raw)
        .ok()
        .map(|s| s.trim().to_lowercase())
}

/// Reads row 1; `None` when it is unusable, with the problems pushed.
fn read_header(cells: &[&[u8]], row: usize, errors: &mut Errors) -> Option<Layout> {
    // A file saved with another separator reads as one cell per line; every other check would
    // only add noise to the one fix that matters.
    for (sep, what) in [(b';', "semicolons"), (b'\t', "tabs")] {
        let split_names_a_column = cells.iter().any(|cell| {
            cell.contains(&sep)
                && cell
                    .split(|b| *b == sep)
                    .any(|part| header_name(part).is_some_and(|n| column_index(&n).is_some()))
        });
        if split_names_a_column {
            errors.push(CellError {
                row,
                column: String::new(),
                message: format!("the header is separated by {what}, not commas"),
                fix: "save as CSV with commas (in Excel: Save As → CSV UTF-8 (Comma delimited))"
                    .to_owned(),
            });
            return None;
        }
    }
    let names: Vec<Option<String>> = cells.iter().map(|c| header_name(c)).collect();
    if !names
        .iter()
        .any(|n| n.as_deref().and_then(column_index).is_some())
    {
        errors.push(CellError {
            row,
            column: String::new(),
            message: "the first row names no known column, so it is not a header".to_owned(),
            fix: format!(
                "start the file with a header row naming the columns ({} are required; the columns are {})",
                required_columns().join(", "),
                all_columns()
            ),
        });
        return None;
    }
    let before = errors.count();
    let mut by_cell = Vec::with_capacity(cells.len());
    let mut first_at: HashMap<usize, usize> = HashMap::new();
    for (pos, (raw, name)) in cells.iter().zip(&names).enumerate() {
        let mut fail = |column: String, message: String, fix: String| {
            errors.push(CellError {
                row,
                column,
                message,
                fix,
            });
        };
        by_cell.push(None);
        if let Some(what) = formula_start(raw) {
            fail(
                column_letter(pos),
                formula_message(what),
                FORMULA_FIX.to_owned(),
            );
            continue;
        }
        let Some(name) = name else {
            fail(
                column_letter(pos),
                "the header is not UTF-8 text".to_owned(),
                "save the file as CSV UTF-8 (Comma delimited)".to_owned(),
            );
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let Some(i) = column_index(name) else {
            let written = shown(std::str::from_utf8(raw).map_or(name.as_str(), str::trim));
            let message = format!("`{written}` is not a known column");
            // Suggestions cost an edit distance per known column: only for problems listed.
            let suggestion = if errors.is_full() {
                None
            } else {
                closest_column(name)
            };
            let fix = match suggestion {
                Some(k) => format!("did you mean `{k}`? The columns are {}", all_columns()),
                None => format!("rename or delete it; the columns are {}", all_columns()),
            };
            errors.push(CellError {
                row,
                column: written,
                message,
                fix,
            });
            continue;
        };
        match first_at.get(&i) {
            Some(first) => fail(
                COLUMNS[i].0.to_owned(),
                format!(
                    "appears twice, in columns {} and {}",
                    column_letter(*first),
                    column_letter(pos)
                ),
                "delete one of them".to_owned(),
            ),
            None => {
                first_at.insert(i, pos);
                by_cell[pos] = Some(i);
            }
        }
    }
    for (i, (name, required, what)) in COLUMNS.iter().enumerate() {
        if *required && !first_at.contains_key(&i) {
            errors.push(CellError {
                row,
                column: (*name).to_owned(),
                message: "this required column is missing".to_owned(),
                fix: format!("add a column headed `{name}`: {what}"),
            });
        }
    }
    (errors.count() == before).then(|| Layout::new(by_cell))
}

/// The known column a mistyped header most likely meant (`Tenant ID`, `usage-location`).
fn closest_column(name: &str) -> Option<&'static str> {
    if name.chars().count() > 64 {
        return None;
    }
    let name: String = name
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect();
    COLUMNS
        .iter()
        .map(|(k, _, _)| (crate::text::edit_distance(&name, k), *k))
        .filter(|(d, k)| {
            *d <= 2.max(k.len() / 3)
                || (k.len() >= 4 && name.contains(k))
                || (name.len() >= 4 && k.starts_with(name.as_str()))
        })
        .min()
        .map(|(_, k)| k)
}

/// What a cell starts with that a spreadsheet would run as a formula, if anything. Leading
/// spaces and line breaks are looked through, because they are trimmed before the value is kept
/// and the stored text would then start with the sign.
fn formula_start(raw: &[u8]) -> Option<&'static str> {
    match raw.first() {
        Some(b'\t') => return Some("a tab"),
        Some(b'\r') => return Some("a carriage return"),
        _ => {}
    }
    match raw.trim_ascii_start().first() {
        Some(b'=') => Some("`=`"),
        Some(b'+') => Some("`+`"),
        Some(b'-') => Some("`-`"),
        Some(b'@') => Some("`@`"),
        _ => None,
    }
}

fn formula_message(what: &str) -> String {
    format!(
        "starts with {what}: cells starting with = + - @ are refused: spreadsheets run them as formulas"
    )
}

/// Bidirectional-text controls: invisible, and able to make a name read differently from what it
/// is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks one data cell and returns its text, trimmed; `Err((message, fix))` otherwise. The
/// formula check comes first, so a hostile cell gets the message that explains it.
fn read_cell(raw: &[u8], column: &str) -> Result<String, (String, String)> {
    if let Some(what) = formula_start(raw) {
        return Err((formula_message(what), FORMULA_FIX.to_owned()));
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err((
            "is not UTF-8 text".to_owned(),
            "save the file as CSV UTF-8 (Comma delimited); other encodings garble accented letters"
                .to_owned(),
        ));
    };
    // Trimming below also strips non-ASCII spaces (U+00A0, U+3000), which the byte check does
    // not skip.
    if let Some(what) = formula_start(text.trim_start().as_bytes()) {
        return Err((formula_message(what), FORMULA_FIX.to_owned()));
    }
    let chars = text.chars().count();
    if chars > MAX_CELL_CHARS {
        return Err((
            format!("is {chars} characters long, more than the {MAX_CELL_CHARS} a cell may hold"),
            "shorten it".to_owned(),
        ));
    }
    let multiline = column == MULTILINE_COLUMN;
    for c in text.chars() {
        if matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}') {
            if !multiline {
                return Err((
                    "contains a line break".to_owned(),
                    format!("keep it on one line; only {MULTILINE_COLUMN} may span lines"),
                ));
            }
        } else if c.is_control() || is_bidi_control(c) {
            return Err((
                format!(
                    "contains the invisible control character U+{:04X}",
                    u32::from(c)
                ),
                "delete it (retype the cell if you cannot see it)".to_owned(),
            ));
        }
    }
    let text = text.trim();
    Ok(if multiline {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text.to_owned()
    })
}

/// A value for quoting in a message, cut short so a message stays a line.
fn shown(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

/// "a, b or c".
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// One problem in a row, before it gets its row number.
struct RowProblem {
    column: String,
    /// The cell's position, when the problem is about one cell rather than a column's value.
    cell: Option<usize>,
    message: String,
    fix: String,
}

fn row_problem(column: &str, message: impl Into<String>, fix: impl Into<String>) -> RowProblem {
    RowProblem {
        column: column.to_owned(),
        cell: None,
        message: message.into(),
        fix: fix.into(),
    }
}

/// A row's cells by column, `None` where the column is absent or the cell empty or refused.
struct Cells(Vec<Option<String>>);

impl Cells {
    fn get(&self, column: &str) -> Option<&str> {
        column_index(column)
            .and_then(|i| self.0.get(i))
            .and_then(|v| v.as_deref())
    }
}

/// Parses one of a fixed set of names, ignoring case.
fn choice<T: Copy>(
    column: &str,
    value: Option<&str>,
    options: &[(T, &'static str)],
    what: &str,
    problems: &mut Vec<RowProblem>,
) -> Option<T> {
    let names: Vec<&str> = options.iter().map(|(_, n)| *n).collect();
    let value = value?;
    if let Some((v, _)) = options.iter().find(|(_, n)| n.eq_ignore_ascii_case(value)) {
        return Some(*v);
    }
    problems.push(row_problem(
        column,
        format!("`{}` is not {what}", shown(value)),
        format!("write one of {}", one_of(&names)),
    ));
    None
}

/// Checks a provider column and the id column that must come with it.
fn link<T: Copy>(
    cells: &Cells,
    (provider_column, id_column): (&str, &str),
    options: &[(T, &'static str)],
    what: &str,
    id_what: &str,
    problems: &mut Vec<RowProblem>,
) -> Option<(T, String)> {
    let names: Vec<&str> = options.iter().map(|(_, n)| *n).collect();
    let provider = choice(
        provider_column,
        cells.get(provider_column),
        options,
        what,
        problems,
    );
    match (cells.get(provider_column), cells.get(id_column)) {
        (Some(_), Some(id)) => provider.map(|p| (p, id.to_owned())),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(row_problem(
                id_column,
                format!("empty, but {provider_column} is set"),
                format!("give {id_what}, or clear {provider_column}"),
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(row_problem(
                provider_column,
                format!("empty, but {id_column} is set"),
                format!("write one of {}, or clear {id_column}", one_of(&names)),
            ));
            None
        }
    }
}

/// The CSV column a [`validate`] field comes from.
fn column_of(field: &str) -> &str {
    match field {
        "rmm" => "rmm_provider",
        "rmm.site" => "rmm_site",
        "psa" => "psa_provider",
        "psa.company_id" => "psa_company_id",
        "permissions" | "permissions.profile" => "permission_profile",
        f => f.strip_prefix("defaults.").unwrap_or(f),
    }
}

/// Checks one company row: pushes its problems and returns the company when it has none.
fn read_row(
    raw: &[&[u8]],
    row: usize,
    layout: &Layout,
    seen_ids: &mut HashMap<String, usize>,
    errors: &mut Errors,
) -> Option<Company> {
    let width = layout.by_cell.len();
    if raw.len() != width {
        // The cells no longer line up with their columns, so any per-cell message would blame
        // the wrong column.
        let fix = if raw.len() > width {
            "a cell holds an unquoted comma: put cells with commas in double quotes (\"Contoso, Ltd\")"
        } else if raw.iter().any(|c| c.contains(&b'\n')) {
            "a `\"` opens a quoted cell that is never closed, so the following lines ran into it: close the quote, or double any `\"` inside a quoted cell"
        } else {
            "a cell is missing: every row needs one cell per header column, even if empty"
        };
        errors.push(CellError {
            row,
            column: String::new(),
            message: format!(
                "has {} cells, but the header has {width} columns",
                raw.len()
            ),
            fix: fix.to_owned(),
        });
        return None;
    }
    let mut problems: Vec<RowProblem> = Vec::new();
    let mut values = vec![None; COLUMNS.len()];
    for (pos, cell) in raw.iter().enumerate() {
        let column = layout.by_cell[pos].map(|i| COLUMNS[i].0);
        match read_cell(cell, column.unwrap_or("")) {
            Err((message, fix)) => problems.push(RowProblem {
                column: column.map_or_else(|| column_letter(pos), str::to_owned),
                cell: Some(pos),
                message,
                fix,
            }),
            Ok(text) if text.is_empty() => {}
            Ok(text) => match layout.by_cell[pos] {
                Some(i) => values[i] = Some(text),
                None => problems.push(RowProblem {
                    column: column_letter(pos),
                    cell: Some(pos),
                    message: format!("holds `{}`, but its column has no header", shown(&text)),
                    fix: "give the column a header, or delete the cell".to_owned(),
                }),
            },
        }
    }
    let cells = Cells(values);
    let refused: Vec<String> = problems.iter().map(|p| p.column.clone()).collect();
    let company = build_company(&cells, &mut problems);
    // A refused cell reads as empty from here on; "required" would only repeat the refusal.
    let mut index = 0;
    problems.retain(|p| {
        index += 1;
        index <= refused.len() || !refused.contains(&p.column)
    });
    if let Some(id) = cells.get("id")
        && CompanyId::parse(id).is_ok()
    {
        if let Some(first) = seen_ids.get(id) {
            problems.push(row_problem(
                "id",
                format!("`{id}` is already the id of the company on row {first}"),
                "give each company its own id, or merge the two rows",
            ));
        } else {
            seen_ids.insert(id.to_owned(), row);
        }
    }
    problems.sort_by_cached_key(|p| p.cell.or_else(|| layout.at(&p.column)));
    let ok = problems.is_empty();
    for p in problems {
        errors.push(CellError {
            row,
            column: p.column,
            message: p.message,
            fix: p.fix,
        });
    }
    company.filter(|_| ok)
}

/// Builds the company from a row's cells and adds what [`validate`] says about it. Returns it
/// when every cell parsed; the caller still looks at `problems` before keeping it.
fn build_company(cells: &Cells, problems: &mut Vec<RowProblem>) -> Option<Company> {
    let id = match cells.get("id") {
        None => {
            problems.push(row_problem(
                "id",
                "required",
                "give the company an id: lowercase letters, digits and `-` (e.g. contoso)",
            ));
            None
        }
        Some(s) => match CompanyId::parse(s) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(row_problem(
                    "id",
                    e.to_string(),
                    "write e.g. contoso or fabrikam-uk",
                ));
                None
            }
        },
    };
    let identity = IdentityProvider::ALL.map(|p| (p, p.name()));
    let mailbox = MailboxProvider::ALL.map(|p| (p, p.name()));
    let required = |column: &str, options: &[&str], problems: &mut Vec<RowProblem>| {
        if cells.get(column).is_none() {
            problems.push(row_problem(
                column,
                "required",
                format!("write one of {}", one_of(options)),
            ));
        }
    };
    required("identity_provider", &identity.map(|(_, n)| n), problems);
    required("mailbox_provider", &mailbox.map(|(_, n)| n), problems);
    let identity_provider = choice(
        "identity_provider",
        cells.get("identity_provider"),
        &identity,
        "an identity provider",
        problems,
    );
    let mailbox_provider = choice(
        "mailbox_provider",
        cells.get("mailbox_provider"),
        &mailbox,
        "a mailbox provider",
        problems,
    );
    let rmm = link(
        cells,
        ("rmm_provider", "rmm_site"),
        &RmmProvider::ALL.map(|p| (p, p.name())),
        "an RMM",
        "the company's site id in the RMM",
        problems,
    )
    .map(|(provider, site)| RmmLink { provider, site });
    let psa = link(
        cells,
        ("psa_provider", "psa_company_id"),
        &PsaProvider::ALL.map(|p| (p, p.name())),
        "a PSA",
        "the company's id in the PSA",
        problems,
    )
    .map(|(provider, company_id)| PsaLink {
        provider,
        company_id,
    });
    let username_format = choice(
        "username_format",
        cells.get("username_format"),
        &UsernameFormat::ALL,
        "a username format",
        problems,
    );
    let profile = choice(
        "permission_profile",
        cells.get("permission_profile"),
        &Profile::ALL.map(|p| (p, p.name())),
        "a permission profile",
        problems,
    )
    .unwrap_or_default();
    let text = |column: &str| cells.get(column).map(str::to_owned);
    let base = Company {
        // Stands in for a refused id while the other columns are checked; never returned.
        id: id
            .clone()
            .unwrap_or_else(|| CompanyId::parse("x").expect("`x` is a valid company id")),
        name: text("name").unwrap_or_default(),
        tenant_id: text("tenant_id"),
        identity_provider: identity_provider.unwrap_or(IdentityProvider::EntraId),
        mailbox_provider: mailbox_provider.unwrap_or(MailboxProvider::ExchangeOnline),
        ad_runner: text("ad_runner"),
        entra_connect_server: text("entra_connect_server"),
        exchange_server: text("exchange_server"),
        exchange_runner: text("exchange_runner"),
        rmm,
        psa,
        defaults: CompanyDefaults {
            upn_domain: text("upn_domain"),
            usage_location: text("usage_location"),
            ou: text("ou"),
            username_format,
            inputs: Default::default(),
        },
        approvers: cells
            .get("approvers")
            .map(|a| a.split(';').map(str::to_owned).collect())
            .unwrap_or_default(),
        permissions: Permissions::profile(profile),
        custom_instructions: text("custom_instructions").unwrap_or_default(),
        settings: Map::new(),
    };
    // When a provider did not parse, only what `validate` says under every provider it could
    // have been is reported: the rest depends on the value the technician has yet to fix.
    let identities: &[IdentityProvider] = match &identity_provider {
        Some(p) => std::slice::from_ref(p),
        None => &IdentityProvider::ALL,
    };
    let mailboxes: &[MailboxProvider] = match &mailbox_provider {
        Some(p) => std::slice::from_ref(p),
        None => &MailboxProvider::ALL,
    };
    let mut company = base;
    normalize(&mut company);
    let mut found: Option<Vec<FieldProblem>> = None;
    for idp in identities {
        for mbx in mailboxes {
            let mut c = company.clone();
            c.identity_provider = *idp;
            c.mailbox_provider = *mbx;
            let now = validate(&c);
            found = Some(match found {
                None => now,
                Some(before) => before.into_iter().filter(|p| now.contains(p)).collect(),
            });
        }
    }
    let from_cells = problems.len();
    for p in found.unwrap_or_default() {
        let column = column_of(&p.field);
        // A cell already refused would be blamed twice (a refused ad_runner reads as missing).
        if problems[..from_cells].iter().any(|q| q.column == column) {
            continue;
        }
        let fix = if column == "approvers" {
            "list technicians' emails separated by `;` (lead@msp.example; tech@msp.example)"
                .to_owned()
        } else {
            p.fix
        };
        problems.push(RowProblem {
            column: column.to_owned(),
            cell: None,
            message: p.message,
            fix,
        });
    }
    let parsed = id.is_some() && identity_provider.is_some() && mailbox_provider.is_some();
    parsed.then_some(company)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id,name,tenant_id,identity_provider,mailbox_provider,ad_runner,entra_connect_server,exchange_server,exchange_runner,rmm_provider,rmm_site,psa_provider,psa_company_id,upn_domain,usage_location,ou,username_format,approvers,permission_profile,custom_instructions";
    const TENANT: &str = "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10";

    /// A row under [`HEADER`] with the given cells set, quoted when they need it.
    fn row(cells: &[(&str, &str)]) -> String {
        COLUMNS
            .iter()
            .map(|(name, _, _)| {
                let v = cells
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| *v);
                if v.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A valid cloud-only company row.
    fn cloud(id: &str) -> String {
        row(&[
            ("id", id),
            ("name", "Contoso"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
        ])
    }

    fn file(rows: &[String]) -> Vec<u8> {
        let mut text = HEADER.to_owned();
        for r in rows {
            text.push('\n');
            text.push_str(r);
        }
        text.push('\n');
        text.into_bytes()
    }

    fn errors(input: &[u8]) -> Vec<CellError> {
        match parse_companies_csv(input) {
            Ok(c) => panic!("accepted {} companies", c.len()),
            Err(e) => e,
        }
    }

    /// The one error at `row` and `column`, which must mention `phrase`.
    #[track_caller]
    fn find(errs: &[CellError], row: usize, column: &str, phrase: &str) -> CellError {
        let here: Vec<&CellError> = errs
            .iter()
            .filter(|e| e.row == row && e.column == column)
            .collect();
        assert_eq!(
            here.len(),
            1,
            "want one error at row {row} column {column:?}, got {errs:#?}"
        );
        let text = here[0].to_string();
        assert!(text.contains(phrase), "{text:?} lacks {phrase:?}");
        here[0].clone()
    }

    /// `errs` is exactly one error, at `row` and `column`, mentioning `phrase`.
    #[track_caller]
    fn only(errs: &[CellError], row: usize, column: &str, phrase: &str) {
        assert_eq!(errs.len(), 1, "{errs:#?}");
        find(errs, row, column, phrase);
    }

    #[test]
    fn a_valid_file_round_trips_into_companies() {
        let input = format!(
            "{}\n{}\n{}\n{}\n",
            HEADER
                .replace("tenant_id", " Tenant_ID ")
                .replace("name,", "NAME,"),
            row(&[
                ("id", "contoso"),
                ("name", "  Contoso, Ltd \"UK\"  "),
                ("tenant_id", "8F1C0E2A-0B5E-4F7E-9A51-3C2D6A7B9E10"),
                ("identity_provider", "entra_id"),
                ("mailbox_provider", "Exchange_Online"),
                ("psa_provider", "autotask"),
                ("psa_company_id", "12345"),
                ("upn_domain", "Contoso.com"),
                ("usage_location", "gb"),
                ("username_format", "first.last"),
                (
                    "approvers",
                    " Lead@MSP.example ; tech@msp.example;lead@msp.example;"
                ),
                ("permission_profile", "helpdesk"),
                (
                    "custom_instructions",
                    "Never license before HR signs.\r\nSay \"hello\", then wait."
                ),
            ]),
            row(&[
                ("id", "fabrikam-uk"),
                ("name", "Fabrikam"),
                ("tenant_id", TENANT),
                ("identity_provider", "hybrid"),
                ("mailbox_provider", "exchange_hybrid"),
                ("ad_runner", "RUNNER01"),
                ("entra_connect_server", "AADC01"),
                ("exchange_server", "exch01.fabrikam.local"),
                ("rmm_provider", "datto"),
                ("rmm_site", "abc-123"),
                ("ou", "OU=Users,DC=fabrikam,DC=local"),
                ("username_format", "flast"),
                ("permission_profile", "it_admin"),
            ]),
            row(&[
                ("id", "northwind"),
                ("name", "Northwind Traders"),
                ("identity_provider", "on_prem_ad"),
                ("mailbox_provider", "exchange_server"),
                ("ad_runner", "DC01"),
                ("exchange_server", "EXCH01"),
                ("exchange_runner", "RUN02"),
                ("rmm_provider", "ninjaone"),
                ("rmm_site", "42"),
            ]),
        );
        let companies = parse_companies_csv(input.as_bytes()).unwrap();
        assert_eq!(companies.len(), 3);

        let c = &companies[0];
        assert_eq!(c.id.as_str(), "contoso");
        assert_eq!(c.name, "Contoso, Ltd \"UK\"");
        assert_eq!(c.tenant_id.as_deref(), Some(TENANT));
        assert_eq!(c.identity_provider, IdentityProvider::EntraId);
        assert_eq!(c.mailbox_provider, MailboxProvider::ExchangeOnline);
        assert_eq!(c.rmm, None);
        assert_eq!(
            c.psa,
            Some(PsaLink {
                provider: PsaProvider::Autotask,
                company_id: "12345".to_owned()
            })
        );
        assert_eq!(c.defaults.upn_domain.as_deref(), Some("contoso.com"));
        assert_eq!(c.defaults.usage_location.as_deref(), Some("GB"));
        assert_eq!(
            c.defaults.username_format,
            Some(UsernameFormat::FirstDotLast)
        );
        assert_eq!(c.approvers, ["lead@msp.example", "tech@msp.example"]);
        assert_eq!(c.permissions, Permissions::profile(Profile::Helpdesk));
        assert_eq!(
            c.custom_instructions,
            "Never license before HR signs.\nSay \"hello\", then wait."
        );
        assert!(c.settings.is_empty());

        let f = &companies[1];
        assert_eq!(f.id.as_str(), "fabrikam-uk");
        assert_eq!(f.identity_provider, IdentityProvider::Hybrid);
        assert_eq!(f.mailbox_provider, MailboxProvider::ExchangeHybrid);
        assert_eq!(f.ad_runner.as_deref(), Some("RUNNER01"));
        assert_eq!(f.entra_connect_server.as_deref(), Some("AADC01"));
        assert_eq!(f.exchange_server.as_deref(), Some("exch01.fabrikam.local"));
        assert_eq!(
            f.rmm,
            Some(RmmLink {
                provider: RmmProvider::Datto,
                site: "abc-123".to_owned()
            })
        );
        assert_eq!(
            f.defaults.ou.as_deref(),
            Some("OU=Users,DC=fabrikam,DC=local")
        );
        assert_eq!(f.defaults.username_format, Some(UsernameFormat::FLast));
        assert_eq!(f.permissions.profile, Profile::ItAdmin);
        assert!(f.approvers.is_empty());

        let n = &companies[2];
        assert_eq!(n.tenant_id, None);
        assert_eq!(n.identity_provider, IdentityProvider::OnPremAd);
        assert_eq!(n.mailbox_provider, MailboxProvider::ExchangeServer);
        assert_eq!(n.exchange_runner.as_deref(), Some("RUN02"));
        assert_eq!(
            n.rmm.as_ref().map(|r| (r.provider, r.site.as_str())),
            Some((RmmProvider::Ninjaone, "42"))
        );
        assert_eq!(n.psa, None);
        assert_eq!(n.permissions, Permissions::profile(Profile::ReadOnly));
        assert_eq!(n.custom_instructions, "");
    }

    #[test]
    fn bom_crlf_blank_lines_and_blank_spreadsheet_rows_are_accepted() {
        let input = format!(
            "\u{FEFF}{HEADER}\r\n{}\r\n\r\n\r\n{}\r\n{}\r\n   \r\n{}\r\n\r\n",
            cloud("a"),
            cloud("b"),
            ",".repeat(COLUMNS.len() - 1),
            cloud("c")
        );
        let ids: Vec<String> = parse_companies_csv(input.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| c.id.as_str().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn rows_are_numbered_as_a_spreadsheet_shows_them() {
        // Row 2: a; rows 3 and 4 blank; row 5: a cell spanning two lines; row 6: a bad id.
        let spanning = row(&[
            ("id", "b"),
            ("name", "B"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
            ("custom_instructions", "line one\r\nline two"),
        ]);
        for eol in ["\n", "\r\n", "\r"] {
            let input = [
                HEADER.to_owned(),
                cloud("a"),
                String::new(),
                String::new(),
                spanning.clone(),
                cloud("C"),
            ]
            .join(eol);
            let errs = errors(input.as_bytes());
            only(&errs, 6, "id", "`C` is not a valid company id");
        }
    }

    #[test]
    fn an_unknown_header_is_named_with_the_closest_column_and_the_list() {
        let errs = errors(&file(&[]).replace_header("tenant_id", "Tenant ID"));
        let e = find(&errs, 1, "Tenant ID", "`Tenant ID` is not a known column");
        assert!(e.fix.starts_with("did you mean `tenant_id`?"), "{e}");
        assert!(
            e.fix.contains("id, name, tenant_id, identity_provider"),
            "{e}"
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");

        let errs = errors(&file(&[]).replace_header("approvers", "favourite_colour"));
        let e = find(&errs, 1, "favourite_colour", "is not a known column");
        assert!(
            e.fix
                .starts_with("rename or delete it; the columns are id, name"),
            "{e}"
        );
    }

    trait ReplaceHeader {
        fn replace_header(&self, from: &str, to: &str) -> Vec<u8>;
    }

    impl ReplaceHeader for Vec<u8> {
        fn replace_header(&self, from: &str, to: &str) -> Vec<u8> {
            let text = String::from_utf8(self.clone()).unwrap();
            let (header, rest) = text.split_once('\n').unwrap();
            let header: Vec<&str> = header
                .split(',')
                .map(|h| if h == from { to } else { h })
                .collect();
            format!("{}\n{rest}", header.join(",")).into_bytes()
        }
    }

    #[test]
    fn a_missing_required_column_is_named() {
        let input = "id,name,identity_provider\ncontoso,Contoso,entra_id\n";
        let errs = errors(input.as_bytes());
        only(
            &errs,
            1,
            "mailbox_provider",
            "this required column is missing",
        );
        assert!(
            errs[0]
                .fix
                .contains("exchange_online, exchange_server or exchange_hybrid")
        );
    }

    #[test]
    fn a_duplicate_column_is_named_with_both_letters() {
        let input = "id,name,identity_provider,mailbox_provider, NAME \n";
        let errs = errors(input.as_bytes());
        only(&errs, 1, "name", "appears twice, in columns B and E");
    }

    #[test]
    fn a_header_separated_by_semicolons_or_tabs_asks_for_commas() {
        for (sep, what) in [(";", "semicolons"), ("\t", "tabs")] {
            let input = format!(
                "{}\n{}\n",
                HEADER.replace(',', sep),
                cloud("a").replace(',', sep)
            );
            let errs = errors(input.as_bytes());
            only(
                &errs,
                1,
                "",
                &format!("the header is separated by {what}, not commas"),
            );
            assert!(
                errs[0].fix.starts_with("save as CSV with commas"),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn a_first_row_of_data_is_not_taken_for_a_header() {
        let input = format!("{}\n{}\n", cloud("a"), cloud("b"));
        let errs = errors(input.as_bytes());
        only(&errs, 1, "", "the first row names no known column");
    }

    #[test]
    fn rows_with_more_or_fewer_cells_than_the_header_are_refused() {
        let input = file(&[
            cloud("a"),
            format!("{},extra", cloud("b")),
            "c,C,x".to_owned(),
        ]);
        let errs = errors(&input);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        let more = find(&errs, 3, "", "has 21 cells, but the header has 20 columns");
        assert!(more.fix.contains("unquoted comma"), "{more}");
        let fewer = find(&errs, 4, "", "has 3 cells, but the header has 20 columns");
        assert!(fewer.fix.contains("a cell is missing"), "{fewer}");
    }

    #[test]
    fn an_unclosed_quote_is_explained() {
        let input = file(&[
            cloud("a").replacen("Contoso", "\"Contoso, Ltd", 1),
            cloud("b"),
            cloud("c"),
        ]);
        let errs = errors(&input);
        let e = find(&errs, 2, "", "but the header has 20 columns");
        assert!(e.fix.contains("never closed"), "{e}");
    }

    #[test]
    fn bad_choices_list_the_allowed_values() {
        let bad = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "azure"),
            ("mailbox_provider", "gmail"),
            ("rmm_provider", "kaseya"),
            ("rmm_site", "1"),
            ("psa_provider", "zendesk"),
            ("psa_company_id", "1"),
            ("username_format", "f.last"),
            ("permission_profile", "admin"),
        ]);
        let errs = errors(&file(&[bad]));
        assert_eq!(errs.len(), 6, "{errs:#?}");
        find(
            &errs,
            2,
            "identity_provider",
            "`azure` is not an identity provider; write one of entra_id, on_prem_ad, hybrid or hybrid_no_sync",
        );
        find(
            &errs,
            2,
            "mailbox_provider",
            "`gmail` is not a mailbox provider; write one of exchange_online, exchange_server or exchange_hybrid",
        );
        find(
            &errs,
            2,
            "rmm_provider",
            "write one of datto, ninjaone or connectwise_automate",
        );
        find(
            &errs,
            2,
            "psa_provider",
            "write one of autotask, connectwise or halopsa",
        );
        find(
            &errs,
            2,
            "username_format",
            "write one of first.last, flast, firstl, first, first_last or lastf",
        );
        find(
            &errs,
            2,
            "permission_profile",
            "write one of read_only, helpdesk, it_admin or full_automation",
        );
        // Listed left to right, as the columns are in the file.
        let columns: Vec<&str> = errs.iter().map(|e| e.column.as_str()).collect();
        assert_eq!(
            columns,
            [
                "identity_provider",
                "mailbox_provider",
                "rmm_provider",
                "psa_provider",
                "username_format",
                "permission_profile"
            ]
        );
    }

    #[test]
    fn a_bad_provider_hides_only_the_checks_that_depend_on_it() {
        // With the identity provider unknown, whether ad_runner belongs cannot be judged; a
        // malformed usage location, and on-prem hosts without an RMM, can.
        let bad = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "azure"),
            ("mailbox_provider", "exchange_online"),
            ("ad_runner", "DC01"),
            ("usage_location", "GBR"),
        ]);
        let errs = errors(&file(&[bad]));
        let columns: Vec<&str> = errs.iter().map(|e| e.column.as_str()).collect();
        assert_eq!(
            columns,
            ["identity_provider", "rmm_provider", "usage_location"],
            "{errs:#?}"
        );
    }

    #[test]
    fn empty_required_cells_are_reported() {
        let errs = errors(&file(&[row(&[("name", "A")])]));
        find(&errs, 2, "id", "required");
        find(
            &errs,
            2,
            "identity_provider",
            "required; write one of entra_id",
        );
        find(
            &errs,
            2,
            "mailbox_provider",
            "required; write one of exchange_online",
        );
        let errs = errors(&file(&[cloud("a").replacen("Contoso", "", 1)]));
        only(
            &errs,
            2,
            "name",
            "a name of 1 to 200 printable characters is required",
        );
    }

    #[test]
    fn a_bad_id_gets_the_id_parser_message() {
        let errs = errors(&file(&[cloud("Contoso_UK")]));
        only(
            &errs,
            2,
            "id",
            "`Contoso_UK` is not a valid company id: use lowercase letters, digits and `-`",
        );
    }

    #[test]
    fn validate_problems_land_in_their_columns() {
        let bad = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", "not-a-guid"),
            ("identity_provider", "on_prem_ad"),
            ("mailbox_provider", "exchange_online"),
            ("ad_runner", "DC 01"),
            ("upn_domain", "contoso"),
            ("usage_location", "GBR"),
            ("ou", "Users"),
            ("approvers", "lead@msp.example; not-an-email"),
        ]);
        let errs = errors(&file(&[bad]));
        find(&errs, 2, "tenant_id", "`not-a-guid` is not a tenant id");
        find(&errs, 2, "ad_runner", "`DC 01` is not a hostname");
        find(
            &errs,
            2,
            "rmm_provider",
            "Steward reaches them through the RMM",
        );
        find(&errs, 2, "upn_domain", "`contoso` is not a domain");
        find(&errs, 2, "ou", "`Users` is not a distinguished name");
        find(
            &errs,
            2,
            "approvers",
            "`not-an-email` is not an email address; list technicians' emails separated by `;`",
        );
        let location = find(&errs, 2, "usage_location", "");
        assert!(
            location.to_string().starts_with("row 2, column `usage_location`: `GBR` is not a country code; write a two-letter ISO 3166 code such as GB"),
            "{location}"
        );
        assert_eq!(errs.len(), 7, "{errs:#?}");
    }

    #[test]
    fn every_bad_approver_is_reported() {
        let bad = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
            ("approvers", "x; lead@msp.example; y"),
        ]);
        let errs = errors(&file(&[bad]));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].message.contains("`x`") && errs[1].message.contains("`y`"),
            "{errs:#?}"
        );
        assert!(errs.iter().all(|e| e.column == "approvers"), "{errs:#?}");
    }

    #[test]
    fn rmm_and_psa_need_both_cells_or_neither() {
        let rmm = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
            ("rmm_provider", "datto"),
            ("psa_company_id", "77"),
        ]);
        let errs = errors(&file(&[rmm]));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        find(
            &errs,
            2,
            "rmm_site",
            "empty, but rmm_provider is set; give the company's site id in the RMM, or clear rmm_provider",
        );
        find(
            &errs,
            2,
            "psa_provider",
            "empty, but psa_company_id is set; write one of autotask, connectwise or halopsa, or clear psa_company_id",
        );
    }

    #[test]
    fn a_repeated_id_names_the_first_row() {
        let errs = errors(&file(&[cloud("a"), cloud("b"), cloud("a"), cloud("a")]));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        find(
            &errs,
            4,
            "id",
            "`a` is already the id of the company on row 2",
        );
        find(&errs, 5, "id", "on row 2");
    }

    #[test]
    fn formula_cells_are_refused_before_any_other_check() {
        let cases: [(&str, &str, &str); 10] = [
            (
                "name",
                "=HYPERLINK(\"http://evil.example\",\"Click\")",
                "starts with `=`",
            ),
            ("name", "+1+2", "starts with `+`"),
            ("name", "-2+3", "starts with `-`"),
            ("approvers", "@SUM(A1)", "starts with `@`"),
            ("name", "\t=1", "starts with a tab"),
            (
                "custom_instructions",
                "\r=1",
                "starts with a carriage return",
            ),
            (
                "custom_instructions",
                "\n  =cmd|' /C calc'!A0",
                "starts with `=`",
            ),
            ("name", "  =1+1", "starts with `=`"),
            ("name", "\u{a0}\u{3000}@SUM(1)", "starts with `@`"),
            // Also not UTF-8 and too long: the formula is what matters.
            ("id", &"=\u{e9}x".repeat(2000), "starts with `=`"),
        ];
        for (column, value, phrase) in cases {
            let mut cells = vec![
                ("id", "a"),
                ("name", "A"),
                ("tenant_id", TENANT),
                ("identity_provider", "entra_id"),
                ("mailbox_provider", "exchange_online"),
            ];
            cells.retain(|(k, _)| *k != column);
            cells.push((column, value));
            let errs = errors(&file(&[row(&cells)]));
            let e = find(&errs, 2, column, phrase);
            assert!(
                e.message.contains(
                    "cells starting with = + - @ are refused: spreadsheets run them as formulas"
                ) && e.fix == "start the text differently",
                "{e}"
            );
        }
        let mut input = file(&[cloud("a")]);
        input.splice(0..0, b"=cmd,".iter().copied());
        let errs = errors(&input);
        find(&errs, 1, "A", "starts with `=`");
    }

    #[test]
    fn non_utf8_cells_are_reported_by_row_and_column() {
        let mut input = file(&[cloud("a"), cloud("b")]);
        let at = input.len() - cloud("b").len() - 1 + "b,Cont".len();
        input[at] = 0xE9;
        let errs = errors(&input);
        only(
            &errs,
            3,
            "name",
            "is not UTF-8 text; save the file as CSV UTF-8",
        );
    }

    #[test]
    fn control_characters_and_stray_line_breaks_are_refused() {
        let with_name = |name: &str| {
            row(&[
                ("id", "a"),
                ("name", name),
                ("tenant_id", TENANT),
                ("identity_provider", "entra_id"),
                ("mailbox_provider", "exchange_online"),
            ])
        };
        only(
            &errors(&file(&[with_name("Con\0toso")])),
            2,
            "name",
            "control character U+0000",
        );
        only(
            &errors(&file(&[with_name("Con\u{1b}[31mtoso")])),
            2,
            "name",
            "U+001B",
        );
        only(
            &errors(&file(&[with_name("Con\u{202e}toso")])),
            2,
            "name",
            "U+202E",
        );
        only(
            &errors(&file(&[with_name("Contoso\nLtd")])),
            2,
            "name",
            "contains a line break; keep it on one line; only custom_instructions may span lines",
        );
        let tab = row(&[
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
            ("custom_instructions", "one\ttwo"),
        ]);
        only(&errors(&file(&[tab])), 2, "custom_instructions", "U+0009");
    }

    #[test]
    fn an_empty_file_or_a_header_alone_has_no_companies() {
        for empty in [&b""[..], b"\xEF\xBB\xBF", b"\n\r\n\n", b" , ,\n"] {
            only(&errors(empty), 1, "", "the file is empty: no companies");
        }
        only(
            &errors(&file(&[])),
            2,
            "",
            "no companies: the file has a header and no rows",
        );
        only(
            &errors(format!("{HEADER}\n\n,,\n").as_bytes()),
            2,
            "",
            "no companies",
        );
    }

    #[test]
    fn a_very_wide_row_is_handled_in_linear_time() {
        // 200,000 headerless columns, each with a value: sorting the row's problems by looking
        // up each column's position would take 4·10¹⁰ steps and never finish.
        const WIDTH: usize = 200_000;
        let mut input = format!("{HEADER}{}\n{}", ",".repeat(WIDTH), cloud("a"));
        input.push_str(&",x".repeat(WIDTH));
        let errs = errors(input.as_bytes());
        assert_eq!(errs.len(), MAX_ERRORS + 1);
        find(&errs, 2, "U", "holds `x`, but its column has no header");
        assert!(
            errs[MAX_ERRORS]
                .message
                .starts_with(&format!("{} more problems", WIDTH - MAX_ERRORS)),
            "{}",
            errs[MAX_ERRORS]
        );
    }

    #[test]
    fn a_cell_longer_than_4000_characters_is_refused() {
        let mut cells = vec![
            ("id", "a"),
            ("name", "A"),
            ("tenant_id", TENANT),
            ("identity_provider", "entra_id"),
            ("mailbox_provider", "exchange_online"),
        ];
        let long = "é".repeat(4001);
        cells.push(("custom_instructions", &long));
        only(
            &errors(&file(&[row(&cells)])),
            2,
            "custom_instructions",
            "is 4001 characters long",
        );
        cells.pop();
        let fits = "é".repeat(4000);
        cells.push(("custom_instructions", &fits));
        assert!(parse_companies_csv(&file(&[row(&cells)])).is_ok());
    }

    #[test]
    fn a_value_under_a_column_without_header_is_refused() {
        let input = format!("{HEADER},\n{},\n{},stray\n", cloud("a"), cloud("b"));
        only(
            &errors(input.as_bytes()),
            3,
            "U",
            "holds `stray`, but its column has no header",
        );
    }

    #[test]
    fn more_than_max_rows_is_one_error() {
        let rows: Vec<String> = (0..=MAX_ROWS).map(|i| cloud(&format!("c{i}"))).collect();
        only(
            &errors(&file(&rows)),
            MAX_ROWS + 2,
            "",
            "more than 10000 companies",
        );
    }

    #[test]
    fn max_rows_valid_companies_parse() {
        let rows: Vec<String> = (0..MAX_ROWS).map(|i| cloud(&format!("c{i}"))).collect();
        let companies = parse_companies_csv(&file(&rows)).unwrap();
        assert_eq!(companies.len(), MAX_ROWS);
        assert_eq!(companies[MAX_ROWS - 1].id.as_str(), "c9999");
    }

    /// A deterministic byte stream (xorshift), so a failure can be replayed.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    fn ten_megabytes_of_garbage_give_a_bounded_answer() {
        const SIZE: usize = 10 * 1024 * 1024;
        // Pure noise: the first row is no header.
        let errs = errors(&noise(7, SIZE));
        assert!(errs.len() <= MAX_ERRORS + 1, "{}", errs.len());

        // A real header over rows of the right width full of hostile cells: every row fails,
        // so the list is cut at 1,000 and the last entry counts the rest.
        let mut input = HEADER.as_bytes().to_vec();
        let bytes = noise(11, SIZE);
        let mut chunks = bytes.chunks(70);
        'rows: while input.len() < SIZE {
            input.push(b'\n');
            for col in 0..COLUMNS.len() {
                let Some(chunk) = chunks.next() else {
                    break 'rows;
                };
                if col > 0 {
                    input.push(b',');
                }
                let cell: Vec<u8> = chunk
                    .iter()
                    .map(|b| {
                        if matches!(b, b',' | b'"' | b'\n' | b'\r') {
                            b'x'
                        } else {
                            *b
                        }
                    })
                    .collect();
                input.extend_from_slice(&cell);
            }
        }
        let errs = errors(&input);
        assert_eq!(errs.len(), MAX_ERRORS + 1);
        let last = &errs[MAX_ERRORS];
        assert!(
            last.message
                .contains("more problems from this row on are not listed"),
            "{last}"
        );
    }

    #[test]
    fn columns_describe_every_allowed_value() {
        let describe = |name: &str| COLUMNS.iter().find(|c| c.0 == name).unwrap().2;
        for p in IdentityProvider::ALL {
            assert!(
                describe("identity_provider").contains(p.name()),
                "{}",
                p.name()
            );
        }
        for p in MailboxProvider::ALL {
            assert!(
                describe("mailbox_provider").contains(p.name()),
                "{}",
                p.name()
            );
        }
        for p in RmmProvider::ALL {
            assert!(describe("rmm_provider").contains(p.name()), "{}", p.name());
        }
        for p in PsaProvider::ALL {
            assert!(describe("psa_provider").contains(p.name()), "{}", p.name());
        }
        for (_, n) in UsernameFormat::ALL {
            assert!(describe("username_format").contains(n), "{n}");
        }
        for p in Profile::ALL {
            assert!(
                describe("permission_profile").contains(p.name()),
                "{}",
                p.name()
            );
        }
        assert_eq!(
            required_columns(),
            ["id", "name", "identity_provider", "mailbox_provider"]
        );
        assert_eq!(
            HEADER,
            COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(",")
        );
    }

    #[test]
    fn display_omits_an_empty_column() {
        let e = CellError {
            row: 1,
            column: String::new(),
            message: "the file is empty: no companies".to_owned(),
            fix: "add rows".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "row 1: the file is empty: no companies; add rows"
        );
        assert_eq!(column_letter(0), "A");
        assert_eq!(column_letter(25), "Z");
        assert_eq!(column_letter(26), "AA");
    }
}

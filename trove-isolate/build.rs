//! Builds the eBPF programs (for bpfel-unknown-none, with the nightly toolchain and bpf-linker that
//! `cargo xtask setup` installs) and leaves the object in `$OUT_DIR` for `include_bytes_aligned!`.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

// The pinned toolchain, shared with `cargo xtask setup`.
#[path = "../xtask/src/ebpf_toolchain.rs"]
#[allow(dead_code)] // the build needs only the channel, the commit and `installed`
mod ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Host-only checks (clippy, docs) without the BPF toolchain: embed an empty object, which
        // the loader refuses at run time with a clear error.
        std::fs::write(format!("{out_dir}/trove-isolate-ebpf"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("trove-isolate-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let toolchain = ebpf_toolchain::installed().ok_or_else(|| {
        anyhow!(
            "the pinned eBPF toolchain ({}, rustc {}) is not installed: run `cargo xtask setup`",
            ebpf_toolchain::CHANNEL,
            ebpf_toolchain::COMMIT
        )
    })?;
    println!("cargo:rerun-if-changed=../xtask/src/ebpf_toolchain.rs");
    // aya-build turns every line the eBPF build prints into a cargo warning, replayed on every
    // later build: keep that build quiet unless it fails (errors are printed regardless).
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "trove-isolate-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(toolchain),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )?;
    strip_dwarf(std::path::Path::new(&format!(
        "{out_dir}/trove-isolate-ebpf"
    )))
}

/// Takes the object's DWARF (`.debug_*` and their relocations) out: 2.0 of its 2.7 MB,
/// which the loader parsed (relocations and all) at every start and nothing used, the kernel
/// taking BTF; embedded, its pages cost the daemon 0.3 to 1.3 MiB of RSS. Every other section
/// stays as it was, which [`same_except_dwarf`] checks.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("parsing {}", path.display()))?;
    for section in elf.sections.iter_mut() {
        if is_dwarf(section.name.as_slice()) {
            section.delete = true;
        }
    }
    // LLVM names the sections in the symbols' string table; the writer keeps a table of its own.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let names = elf.sections.add();
        names.name = (&b".shstrtab"[..]).into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    // Writing drops the symbols of deleted sections, and any relocation that used one.
    let mut stripped = Vec::new();
    elf.write(&mut stripped)
        .with_context(|| format!("writing {} without DWARF", path.display()))?;
    same_except_dwarf(&data, &stripped)
        .with_context(|| format!("{} without DWARF differs in more", path.display()))?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}

/// The DWARF sections and their relocations.
fn is_dwarf(name: &[u8]) -> bool {
    [&b".debug"[..], b".rel.debug", b".rela.debug"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Every section of `original` but the DWARF is in `stripped` with the same bytes, flags,
/// alignment and relocations (offset, kind, symbol name), and so is every symbol but the DWARF
/// sections' own. (The symbol and string tables and the relocation sections are checked
/// through what they hold: symbols are numbered anew.)
fn same_except_dwarf(original: &[u8], stripped: &[u8]) -> anyhow::Result<()> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let (before, after) = (
        object::File::parse(original)?,
        object::File::parse(stripped)?,
    );
    let tables = |name: &str| {
        matches!(name, ".symtab" | ".strtab" | ".shstrtab") || name.starts_with(".rel")
    };
    let symbol_name = |file: &object::File, index| {
        file.symbol_by_index(index)
            .and_then(|s| s.name().map(str::to_owned))
            .ok()
    };
    let relocations = |file: &object::File, section: &object::Section| {
        section
            .relocations()
            .map(|(offset, r)| {
                let symbol = match r.target() {
                    object::RelocationTarget::Symbol(index) => symbol_name(file, index),
                    _ => None,
                };
                (offset, r.kind(), r.size(), symbol)
            })
            .collect::<Vec<_>>()
    };
    for section in before.sections() {
        let name = section.name()?;
        if is_dwarf(name.as_bytes()) || tables(name) {
            continue;
        }
        let kept = after
            .section_by_name(name)
            .ok_or_else(|| anyhow!("section {name} is gone"))?;
        anyhow::ensure!(
            kept.data()? == section.data()?
                && kept.flags() == section.flags()
                && kept.align() == section.align()
                && relocations(&after, &kept) == relocations(&before, &section),
            "section {name} changed"
        );
    }
    let symbols = |file: &object::File| -> anyhow::Result<Vec<_>> {
        let mut symbols = Vec::new();
        for symbol in file.symbols() {
            let section = match symbol.section_index() {
                Some(index) => file.section_by_index(index)?.name()?.to_owned(),
                None => String::new(),
            };
            if is_dwarf(section.as_bytes()) {
                continue;
            }
            symbols.push((
                symbol.name()?.to_owned(),
                section,
                symbol.address(),
                symbol.size(),
                symbol.kind(),
                symbol.is_global(),
            ));
        }
        // By name, section and address: a section's own symbol has no name.
        symbols.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        Ok(symbols)
    };
    anyhow::ensure!(symbols(&after)? == symbols(&before)?, "the symbols changed");
    Ok(())
}

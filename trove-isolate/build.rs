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
/// taking BTF; embedded, it cost the daemon 1.2 MiB of RSS. `.BTF` and `.BTF.ext` stay.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("parsing {}", path.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if [&b".debug"[..], b".rel.debug", b".rela.debug"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            section.delete = true;
        }
    }
    elf.delete_orphans();
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
    let mut stripped = Vec::new();
    elf.write(&mut stripped)
        .with_context(|| format!("writing {} without DWARF", path.display()))?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}

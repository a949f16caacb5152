//! cnpilot datapath: the C eBPF programs (tc, on pods' veths), the one
//! header that defines their maps (`c/cnpilot.h`), its Rust mirror
//! ([`maps`]), and the aya loader.

pub mod maps;

pub mod testing;

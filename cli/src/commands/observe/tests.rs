//! Round trips: what observe writes, `import hubble` reads back.

;; fillloop: edgelimit_decide loops over a memory.fill of nearly 16 MiB.
;; One iteration runs for milliseconds inside a single instruction, so a
;; deadline checked once per many loop iterations is outrun by seconds.
(module
  (memory (export "memory") 256)
  (data (i32.const 16) "\00\00\00\00\00")
  (data (i32.const 32) "\00\01\00\00\00wat")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    (loop $forever
      (memory.fill (i32.const 65536) (i32.const 0) (i32.const 16711680))
      (br $forever))
    (unreachable)))

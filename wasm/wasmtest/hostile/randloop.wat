;; randloop: edgelimit_decide loops over one WASI random_get of 16 MiB:
;; each iteration is a single host call that runs for milliseconds.
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 257)
  (data (i32.const 16) "\00\00\00\00\00")
  (data (i32.const 32) "\00\01\00\00\00wat")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    (loop $forever
      (drop (call $random_get (i32.const 65536) (i32.const 16777216)))
      (br $forever))
    (unreachable)))

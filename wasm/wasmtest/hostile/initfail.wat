;; initfail: edgelimit_init reports an error: "config: nope".
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\01config: nope")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x100000000d))
  (func (export "edgelimit_decide") (param i32 i32) (result i64) (i64.const 0)))

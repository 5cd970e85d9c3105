;; badversion: speaks ABI version 3, which no host speaks yet.
(module
  (memory (export "memory") 1)
  (func (export "edgelimit_abi_version") (result i32) (i32.const 3))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func (export "edgelimit_decide") (param i32 i32) (result i64) (i64.const 0)))

;; loop: edgelimit_decide never returns. The call deadline must stop it.
(module
  (memory (export "memory") 1)
  ;; init answer at 16: status ok, 0 headers
  (data (i32.const 16) "\00\00\00\00\00")
  ;; result at 32: limit, cost 1, key "wat"
  (data (i32.const 32) "\00\01\00\00\00wat")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (unreachable)))

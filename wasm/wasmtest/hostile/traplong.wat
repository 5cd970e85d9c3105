;; traplong: a guest that traps on client-controlled input, as a guest
;; with a bug in its parsing would: a request longer than 200 bytes (a long
;; header, say) reaches unreachable; any other gets limit "wat" at cost 1.
(module
  (memory (export "memory") 1)
  ;; init answer at 16: status ok, 1 header, "x-tenant" (17 bytes)
  (data (i32.const 16) "\00\01\00\00\00\08\00\00\00x-tenant")
  ;; result at 64: limit, cost 1, key "wat" (8 bytes)
  (data (i32.const 64) "\00\01\00\00\00wat")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000011))
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    (if (i32.gt_u (local.get 1) (i32.const 200)) (then unreachable))
    (i64.const 0x4000000008)))

# The ablation with --parallel runs under mpirun (each rank trains whole runs alone) must produce
# the table one process produces with the same thread count: every run is the same computation,
# only on another rank, and the records travel to rank 0 intact. Compares the rows' per-seed
# MRR@10 and NDCG@10 (their JSON text: equal values print equally) and the DPO rows' pairs.
#   cmake -DBIN=ablation -DLAUNCH="mpiexec;-n;2" -DOUT=dir -P ablation_spread_test.cmake
set(launch ${LAUNCH})  # a list once re-read: "mpiexec;-n;2"
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
set(args --only train_sasrec,train_ours,train_ours+dpo --seeds 1,2 --epochs 1 --stage1-epochs 1
         --dim 16 --heads 1 --layers 1 --max-len 10 --threads 1)
execute_process(COMMAND ${BIN} ${args} --checkpoint-dir ${OUT}/ck1 --out ${OUT}/one
                RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "one process exited with ${rc}: ${err}")
endif()
execute_process(COMMAND ${launch} ${BIN} ${args} --parallel runs --checkpoint-dir ${OUT}/ck2
                        --out ${OUT}/spread
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "on 2 ranks \\(each its own runs\\)")
  message(FATAL_ERROR "--parallel runs exited with ${rc}: ${out}${err}")
endif()
file(READ ${OUT}/one.json one)
file(READ ${OUT}/spread.json spread)
string(JSON n LENGTH "${one}" rows)
string(JSON n2 LENGTH "${spread}" rows)
if(NOT n EQUAL 3 OR NOT n2 EQUAL 3)
  message(FATAL_ERROR "expected 3 rows, got ${n} and ${n2}")
endif()
math(EXPR last "${n} - 1")
foreach(i RANGE ${last})
  foreach(key binary mrr@10 ndcg@10)
    string(JSON a GET "${one}" rows ${i} ${key})
    string(JSON b GET "${spread}" rows ${i} ${key})
    if(NOT a STREQUAL b)
      message(FATAL_ERROR "row ${i} ${key}: one process ${a}, --parallel runs ${b}")
    endif()
  endforeach()
endforeach()
string(JSON a GET "${one}" rows 2 runs 1 pairs)
string(JSON b GET "${spread}" rows 2 runs 1 pairs)
if(NOT a STREQUAL b)
  message(FATAL_ERROR "DPO pairs: one process ${a}, --parallel runs ${b}")
endif()
message(STATUS "--parallel runs reproduced the one-process table (3 rows, 2 seeds)")

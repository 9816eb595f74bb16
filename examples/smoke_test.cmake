# Runs train_sasrec for one small epoch on the embedded dataset and checks the metrics JSON keys
# that later tooling relies on (CMake's string(JSON) does the parsing, no Python needed).
file(MAKE_DIRECTORY ${OUT})
execute_process(COMMAND ${BIN} --epochs 1 --dim 16 --heads 1 --layers 1 --max-len 20 --no-progress
                        --metrics-json ${OUT}/metrics.json --checkpoint ${OUT}/ckpt.safetensors
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "train_sasrec exited with ${rc}")
endif()
file(READ ${OUT}/metrics.json json)
foreach(split valid test)
  foreach(key mrr@10 hr@10 ndcg@10)
    string(JSON v GET "${json}" ${split} ${key})
    if(v LESS 0 OR v GREATER 1)
      message(FATAL_ERROR "${split}.${key} = ${v} is not a metric")
    endif()
  endforeach()
endforeach()
foreach(key epochs train_seconds train_tokens_per_second config)
  string(JSON v GET "${json}" ${key})
endforeach()
# Resuming the finished run for one more epoch must work from the checkpoint it wrote.
execute_process(COMMAND ${BIN} --epochs 2 --dim 16 --heads 1 --layers 1 --max-len 20 --no-progress
                        --resume ${OUT}/ckpt.safetensors RESULT_VARIABLE rc2 ERROR_VARIABLE err)
if(NOT rc2 EQUAL 0 OR NOT err MATCHES "resumed from .* at epoch 1")
  message(FATAL_ERROR "resume failed (${rc2}): ${err}")
endif()

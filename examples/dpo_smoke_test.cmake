# Trains a tiny train_ours model, fine-tunes it with dpo_finetune (S-DPO with an anchor, to cover
# the options), and checks the metrics JSON: before/after metrics, pairs, the measured hard share.
# DEVICE (optional, e.g. "cuda") is passed to both as --device; both must then say they ran there.
# LAUNCH (optional, a list such as "mpiexec;-n;2") starts dpo_finetune both times: data-parallel
# DPO must pass the same checks.
file(MAKE_DIRECTORY ${OUT})
set(launch "")
if(DEFINED LAUNCH)
  set(launch ${LAUNCH})
endif()
set(device_args "")
if(DEFINED DEVICE)
  set(device_args --device ${DEVICE})
endif()
execute_process(COMMAND ${TRAIN} --epochs 1 --stage1-epochs 1 --dim 16 --heads 1 --layers 1
                        --max-len 20 --no-progress --threads 1 --checkpoint ${OUT}/ours.safetensors
                        ${device_args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "train_ours exited with ${rc}: ${out}${err}")
endif()
execute_process(COMMAND ${launch} ${DPO} --init-checkpoint ${OUT}/ours.safetensors --loss sdpo --negatives 3
                        --ce-weight 0.5 --no-progress --threads 1 --metrics-json ${OUT}/dpo.json
                        --checkpoint ${OUT}/dpo.safetensors ${device_args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE dpo_out ERROR_VARIABLE dpo_err)
if(NOT rc EQUAL 0 OR NOT dpo_out MATCHES "valid \\(after\\)")
  message(FATAL_ERROR "dpo_finetune exited with ${rc}: ${dpo_out}${dpo_err}")
endif()
if(DEFINED DEVICE)
  if(NOT "${out}${err}" MATCHES ", ${DEVICE}:0 " OR NOT "${dpo_out}${dpo_err}" MATCHES "dpo on ${DEVICE}:0 ")
    message(FATAL_ERROR "train_ours or dpo_finetune did not run on ${DEVICE}:0:\n${out}${err}\n${dpo_out}${dpo_err}")
  endif()
  message(STATUS "train_ours:\n${out}${err}\ndpo_finetune:\n${dpo_out}${dpo_err}")
endif()
file(READ ${OUT}/dpo.json json)
string(JSON pairs GET "${json}" pairs)
if(NOT pairs EQUAL 3000)
  message(FATAL_ERROR "expected one pair per training sequence (3000), got ${pairs}")
endif()
string(JSON share GET "${json}" hard_share_measured)
if(share LESS 0.2 OR share GREATER 0.4)
  message(FATAL_ERROR "hard share ${share} is far from 0.3")
endif()
foreach(split valid_before valid test)
  string(JSON v GET "${json}" ${split} mrr@10)
endforeach()
if(NOT EXISTS ${OUT}/dpo.safetensors)
  message(FATAL_ERROR "no tuned checkpoint written")
endif()
# A checkpoint from other data must be refused with the vocabulary sizes named.
execute_process(COMMAND ${launch} ${DPO} --init-checkpoint ${OUT}/ours.safetensors
                        --data ${FIXTURE} --no-progress RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "vocabulary of [0-9]+ tokens, this data has [0-9]+")
  message(FATAL_ERROR "mismatched data was not refused clearly (${rc}): ${err}")
endif()

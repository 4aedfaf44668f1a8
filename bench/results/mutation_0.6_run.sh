#!/bin/bash
cd "$(dirname "$0")/../.."; source .venv/bin/activate
g() { nice -n 19 python tests/mutation.py --only $2 --tests tests/$1 --timeout 5400 --out /tmp/mut/$1.md > /tmp/mut/$1.log 2>&1; echo "$1 rc=$?"; }
g test_recipe.py M01,M02,M03,M04,M05,M06,M07,M22,M24,M27,M28,M30,M35,M38,M69,M70
g test_contracts.py M129,M130,M132,M134,M135
g test_ssd.py M152,M153,M154,M155,M156
g test_block.py M56,M62,M83,M85,M86,M87,M105
g test_lm_blocks.py M97,M99,M100,M101,M103,M108,M115,M120,M121,M122,M123,M124,M125
g test_levers.py M42,M45,M50,M51,M110,M111,M112,M113
g test_pipeline_cli.py M39,M68,M77,M96
g test_models.py M25
g test_ecosystem.py M54
g test_learning.py M58,M84
g test_ar.py M63
g test_teacher.py M66,M67
g test_ddp.py M91
g test_eval.py M114
g test_lm_eval.py M94

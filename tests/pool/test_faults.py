# GENERATED from test_faults_async.py by tools/unasync.py. DO NOT EDIT.

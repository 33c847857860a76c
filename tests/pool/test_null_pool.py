# GENERATED from test_null_pool_async.py by tools/unasync.py. DO NOT EDIT.

"""SCAFFOLD as a Flower app: stateful clients (Context.state) and a stateful strategy, run resumably by fedsweep.

task.py (data, the control-variate arithmetic, corrected local SGD, the run
config's checks), strategy.py (the server side: FedAvg plus the control
variate c), client_app.py, server_app.py.
"""

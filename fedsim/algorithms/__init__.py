"""The federated (STC, FedAvg, signSGD, top-k) and lazy (GD, QGD, LAG, LAQ) algorithm families."""

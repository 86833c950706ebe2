"""infantino.device: the camera daemon (pipeline loop, MQTT predictions/status, labelled samples) and OTA head
updates (verify, atomic persist, swap, rollback). Needs `infantino[device]`; never torch, tensorflow or mlflow."""

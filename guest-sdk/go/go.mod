module natsplug.dev/sdk

go 1.27

# Omniboard, Sacred's web dashboard, pinned through its npm release (the Docker Hub
# image is only published as :latest).
FROM node:20-bookworm-slim
RUN npm install --global omniboard@2.16.1 && npm cache clean --force
EXPOSE 9000
ENTRYPOINT ["omniboard"]
